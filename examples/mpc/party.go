// Package mpc is an example multi-party computation on cohort's group
// certificates: clinics, each its own task with its own code and its own
// private figure (how many patients waited more than a month, say), learn the
// sum, the mean and the maximum of their figures, and nothing more than those
// reveal.
//
// Each clinic's code runs in an enclave as a unit of its own task; the policy
// declares a group of the clinics' tasks, and every unit obtains the one group
// certificate with its task's. The parties connect pairwise with mutual TLS
// on the group certificate, and each proves its task (package group). A party
// sends its figure only over such a connection, only to a peer that proved a
// task of the group, whose code the policy measured: the figures leave one
// enclave only into another running the agreed code, which computes the
// results and reveals nothing but them. The hosts that run the enclaves see
// their own figure and the results; on the network the figures travel only
// inside TLS.
//
// This is the enclave model of multi-party computation: the trust is in the
// attested code, not in cryptographic secret sharing. Run runs the whole
// example in one process on the simulated enclave backend.
package mpc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cohort-dev/cohort/group"
)

// MaxFigure bounds a private figure, so that no sum can overflow.
const MaxFigure = 1 << 40

// Party is one party's code: its task, its private figure, its group's
// mutual TLS, and where it accepts its peers.
type Party struct {
	Task     string
	Figure   int64 // private: it leaves the enclave only to the group's enclaves
	TLS      *group.TLS
	Listener net.Listener
}

// Result is what every party learns: the aggregates, not the figures. An
// aggregate can still tell something of a figure (the maximum is one party's;
// with two parties the sum gives the other's away): choosing what to reveal
// is the parties' agreement, which their code implements.
type Result struct {
	Parties []string // the tasks whose figures it covers, sorted
	Sum     int64
	Mean    float64
	Max     int64
}

// Compute runs the computation with peers, the address of each other party by
// task. A party dials the peers whose task sorts after its own and accepts the
// others; every connection must prove the task it was expected to be.
func (p *Party) Compute(ctx context.Context, peers map[string]string) (Result, error) {
	if p.Figure < 0 || p.Figure > MaxFigure {
		return Result{}, fmt.Errorf("mpc: %s's figure is out of range 0 to %d", p.Task, MaxFigure)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	figures := map[string]int64{p.Task: p.Figure}
	var mu sync.Mutex
	accept := map[string]bool{}
	var dial []string
	for task := range peers {
		switch {
		case task == p.Task:
			return Result{}, fmt.Errorf("mpc: %s is its own peer", p.Task)
		case task < p.Task:
			accept[task] = true
		default:
			dial = append(dial, task)
		}
	}
	record := func(task string, f int64) {
		mu.Lock()
		figures[task] = f
		mu.Unlock()
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(peers))
	// Closing the listener ends Accept when ctx ends.
	stop := context.AfterFunc(ctx, func() { p.Listener.Close() })
	defer stop()
	if len(accept) > 0 {
		wg.Go(func() { p.acceptPeers(ctx, accept, record, errs) })
	}
	for _, task := range dial {
		wg.Go(func() {
			gc, err := p.dial(ctx, task, peers[task])
			if err != nil {
				errs <- err
				return
			}
			f, err := p.swap(ctx, gc)
			if err != nil {
				errs <- err
				return
			}
			record(task, f)
		})
	}
	var first error
	go func() { wg.Wait(); close(errs) }()
	for err := range errs {
		if first == nil {
			first = err
			cancel() // the others stop too
		}
	}
	if first != nil {
		return Result{}, first
	}
	return aggregate(figures), nil
}

// acceptPeers accepts connections until every expected peer has proved its
// task and exchanged figures, or ctx ends. A connection that fails the
// handshake or proves another task is closed and does not count: whoever
// can reach the listener cannot abort the computation.
func (p *Party) acceptPeers(ctx context.Context, expected map[string]bool, record func(string, int64), errs chan<- error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	defer wg.Wait()
	// Once every peer came, handshakes still under way (strangers') end.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	left := len(expected)
	done := make(chan struct{})
	for {
		conn, err := p.Listener.Accept()
		if err != nil {
			select {
			case <-done: // every peer came: the listener was closed after
			default:
				errs <- fmt.Errorf("mpc: %s waiting for peers: %w", p.Task, err)
			}
			return
		}
		wg.Go(func() {
			gc, err := p.TLS.Server(ctx, conn)
			if err != nil {
				return // not a member, or not one that proved itself: ignored
			}
			mu.Lock()
			ok := expected[gc.Peer.Task]
			delete(expected, gc.Peer.Task) // each peer once
			mu.Unlock()
			if !ok {
				gc.Close()
				return
			}
			f, err := p.swap(ctx, gc)
			if err != nil {
				errs <- err
				return
			}
			record(gc.Peer.Task, f)
			mu.Lock()
			left--
			if left == 0 {
				close(done)
				p.Listener.Close()
			}
			mu.Unlock()
		})
	}
}

// dial connects to the peer of task at addr, retrying while it is not
// listening yet, and checks that it proves that task.
func (p *Party) dial(ctx context.Context, task, addr string) (*group.Conn, error) {
	wait := 20 * time.Millisecond
	for {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("mpc: %s dialling %s: %w", p.Task, task, err)
			case <-time.After(wait):
				wait = min(2*wait, time.Second)
				continue
			}
		}
		gc, err := p.TLS.Client(ctx, conn)
		if err != nil {
			return nil, fmt.Errorf("mpc: %s connecting to %s: %w", p.Task, task, err)
		}
		if gc.Peer.Task != task {
			gc.Close()
			return nil, fmt.Errorf("mpc: %s dialled %s, and the peer proved task %q", p.Task, task, gc.Peer.Task)
		}
		return gc, nil
	}
}

// swap sends this party's figure over a proven connection and reads the
// peer's. ctx ending closes the connection.
func (p *Party) swap(ctx context.Context, gc *group.Conn) (int64, error) {
	defer gc.Close()
	stop := context.AfterFunc(ctx, func() { gc.Close() })
	defer stop()
	sent := make(chan error, 1)
	go func() { sent <- binary.Write(gc, binary.BigEndian, p.Figure) }()
	var f int64
	err := binary.Read(gc, binary.BigEndian, &f)
	if serr := <-sent; serr != nil && err == nil {
		err = serr
	}
	switch {
	case errors.Is(err, io.EOF):
		return 0, fmt.Errorf("mpc: %s: %s closed before sending its figure", p.Task, gc.Peer.Task)
	case err != nil:
		return 0, fmt.Errorf("mpc: %s exchanging with %s: %w", p.Task, gc.Peer.Task, err)
	case f < 0 || f > MaxFigure:
		return 0, fmt.Errorf("mpc: %s sent a figure out of range", gc.Peer.Task)
	}
	return f, nil
}

// aggregate computes the results from every party's figure.
func aggregate(figures map[string]int64) Result {
	r := Result{Max: math.MinInt64}
	for task, f := range figures {
		r.Parties = append(r.Parties, task)
		r.Sum += f
		r.Max = max(r.Max, f)
	}
	sort.Strings(r.Parties)
	r.Mean = float64(r.Sum) / float64(len(figures))
	return r
}

// Equal reports whether two results agree.
func (r Result) Equal(o Result) bool {
	return slices.Equal(r.Parties, o.Parties) && r.Sum == o.Sum && r.Mean == o.Mean && r.Max == o.Max
}

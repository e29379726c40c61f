package unit

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"regexp"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/backoff"
	"github.com/cohort-dev/cohort/issuerclient"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

const (
	leaveTimeout      = time.Second
	heartbeatMinFloor = 10 * time.Millisecond
)

// JoinRequest builds a signed join for a unit holding pair: the body names
// the cluster, the unit id, the task, the measurement and the HTTPS address,
// the time and a fresh nonce, and carries the chain without the root; the
// task key signs it.
func JoinRequest(pair *issuerclient.Pair, cluster, unitID string, measurement []byte, addr string, now time.Time, r io.Reader) ([]byte, error) {
	if r == nil {
		r = rand.Reader
	}
	nonce := make([]byte, messages.NonceSize)
	if _, err := io.ReadFull(r, nonce); err != nil {
		return nil, fmt.Errorf("unit: draw nonce: %w", err)
	}
	body, err := messages.Marshal(&messages.JoinBody{
		V: messages.Version, Cluster: cluster, Unit: unitID, Task: pair.Task, Measurement: measurement,
		Addr: addr, Time: now.UnixNano(), Nonce: nonce, Chain: pair.Chain[:len(pair.Chain)-1],
	})
	if err != nil {
		return nil, err
	}
	digest := messages.JoinDigest(body)
	sig, err := ecdsa.SignASN1(r, pair.Key, digest[:])
	if err != nil {
		return nil, fmt.Errorf("unit: sign join: %w", err)
	}
	return messages.Marshal(&messages.JoinRequest{V: messages.Version, Body: body, Signature: sig})
}

// Join sends the join of unit unitID of cluster and returns the manager's
// reply.
func Join(ctx context.Context, nc *nats.Conn, cluster, unitID string, req []byte, timeout time.Duration) (*messages.JoinReply, error) {
	data, err := service.Request(ctx, nc, messages.ManagerSubject(messages.VerbJoin, cluster, unitID), req, timeout)
	if err != nil {
		return nil, err
	}
	var r messages.JoinReply
	if err := messages.Decode(data, messages.MaxJoinReply, &r); err != nil {
		return nil, fmt.Errorf("join reply: %w", err)
	}
	return &r, nil
}

// Heartbeat tells the managers a member is alive; it reports whether they
// know it.
func Heartbeat(ctx context.Context, nc *nats.Conn, cluster, unitID string, token []byte, timeout time.Duration) (bool, error) {
	req, err := messages.Marshal(&messages.Heartbeat{V: messages.Version, Cluster: cluster, Unit: unitID, Token: token})
	if err != nil {
		return false, err
	}
	data, err := service.Request(ctx, nc, messages.ManagerSubject(messages.VerbHeartbeat, cluster, unitID), req, timeout)
	if err != nil {
		return false, err
	}
	var r messages.HeartbeatReply
	if err := messages.Decode(data, messages.MaxHeartbeatReply, &r); err != nil {
		return false, fmt.Errorf("heartbeat reply: %w", err)
	}
	return r.Known, nil
}

var notUnitID = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// unitID derives a valid unit id from a name: other characters become '-'.
func unitID(name string) string {
	id := notUnitID.ReplaceAllString(name, "-")
	if len(id) > messages.MaxUnitID {
		id = id[:messages.MaxUnitID]
	}
	if id == "" {
		id = "unit"
	}
	return id
}

// membership keeps the unit a member of its cluster until ctx is done: it
// joins, heartbeats at the interval the manager asks for, joins again when
// the manager no longer knows it, and leaves on the way out. A manager that
// does not answer costs nothing but retries: the unit serves regardless.
func (u *Unit) membership(ctx context.Context) {
	for failures := 0; ctx.Err() == nil; {
		if u.expired.Load() {
			// Out of the cluster until renewed: the renewal wakes it.
			select {
			case <-ctx.Done():
				return
			case <-u.rejoin:
			}
			continue
		}
		reply, err := u.join(ctx)
		if err != nil {
			wait := u.retryIn(failures)
			failures++
			u.log.Warn("joining the cluster failed; retrying", "cluster", u.cfg.Cluster, "err", err, "retry_in", wait)
			if !backoff.Wait(ctx, wait) {
				return
			}
			continue
		}
		failures = 0
		u.token.Store(&reply.Token)
		u.log.Info("joined cluster", "cluster", u.cfg.Cluster, "unit_id", u.cfg.ID)
		switch u.heartbeat(ctx, reply) {
		case unknown:
			u.log.Info("the manager no longer knows this unit; joining again", "cluster", u.cfg.Cluster)
			continue
		case changed:
			if u.expired.Load() {
				u.leave(ctx, reply.Token)
				continue
			}
			u.log.Info("joining the cluster again with the renewed certificate", "cluster", u.cfg.Cluster)
			continue
		}
		// ctx is done: leave politely.
		u.leave(ctx, reply.Token)
		return
	}
}

// leave tells the manager the unit leaves, within leaveTimeout.
func (u *Unit) leave(ctx context.Context, token []byte) {
	leave, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaveTimeout)
	defer cancel()
	req, _ := messages.Marshal(&messages.Heartbeat{V: messages.Version, Cluster: u.cfg.Cluster, Unit: u.cfg.ID, Token: token})
	if _, err := service.Request(leave, u.cfg.Conn, messages.ManagerSubject(messages.VerbLeave, u.cfg.Cluster, u.cfg.ID), req, leaveTimeout); err != nil {
		u.log.Debug("leave", "err", err)
	}
}

// Why heartbeating ended.
type beat int

const (
	done    beat = iota // ctx is done
	unknown             // the manager does not know the unit
	changed             // the certificate changed root, expired, or was renewed after it expired
)

func (u *Unit) join(ctx context.Context) (*messages.JoinReply, error) {
	addr := "" // a unit without HTTPS advertises none
	if a := u.Addr(); a != nil {
		addr = a.String()
	}
	req, err := JoinRequest(u.pair.Load(), u.cfg.Cluster, u.cfg.ID, u.cfg.Platform.Measurement(), addr, u.cfg.Now(), nil)
	if err != nil {
		return nil, err
	}
	return Join(ctx, u.cfg.Conn, u.cfg.Cluster, u.cfg.ID, req, u.cfg.Timeout)
}

// heartbeat sends heartbeats until ctx is done, the manager does not know
// the unit, or its certificate changed.
func (u *Unit) heartbeat(ctx context.Context, j *messages.JoinReply) beat {
	interval := max(time.Duration(j.Interval), heartbeatMinFloor)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return done
		case <-u.rejoin:
			return changed
		case <-t.C:
		}
		known, err := Heartbeat(ctx, u.cfg.Conn, u.cfg.Cluster, u.cfg.ID, j.Token, interval)
		switch {
		case err != nil && !errors.Is(err, context.Canceled):
			u.log.Debug("heartbeat", "err", err) // the manager may be restarting: keep beating
		case err == nil && !known:
			return unknown
		}
	}
}

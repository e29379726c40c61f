// Package status is the operators' view of a cohort deployment: it asks the
// issuer and the manager over NATS what they hold and renders it, as text or
// JSON. It backs `cohort status`.
//
// The view reports, it does not vouch: the issuer's root and policy hash are
// shown as the issuer's evidence reply states them, unverified; `cohort
// trust` is the command that verifies them against a pinned measurement.
package status

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cohort-dev/cohort/manager"
	"github.com/cohort-dev/cohort/messages"
	"github.com/cohort-dev/cohort/service"
)

// View is the whole picture. A part that did not answer is nil, with its
// error beside it.
type View struct {
	Issuer       *Issuer         `json:"issuer"`
	IssuerError  string          `json:"issuer_error,omitempty"`
	Manager      *manager.Status `json:"manager"`
	ManagerError string          `json:"manager_error,omitempty"`
}

// Issuer is what the issuer says of itself.
type Issuer struct {
	Backend      string    `json:"backend"`
	RootSHA256   string    `json:"root_sha256"`
	RootSubject  string    `json:"root_subject"`
	RootNotAfter time.Time `json:"root_not_after"`
	PolicySHA256 string    `json:"policy_sha256"`
	// PolicyVersion is the version of the policy in force.
	PolicyVersion uint64 `json:"policy_version"`
	Verified      bool   `json:"verified"` // always false here: see `cohort trust`
}

// Fetch asks the issuer and the manager, each within timeout.
func Fetch(ctx context.Context, nc *nats.Conn, timeout time.Duration) (*View, error) {
	v := &View{}
	if iss, err := fetchIssuer(ctx, nc, timeout); err != nil {
		v.IssuerError = err.Error()
	} else {
		v.Issuer = iss
	}
	if st, err := fetchManager(ctx, nc, timeout); err != nil {
		v.ManagerError = err.Error()
	} else {
		v.Manager = st
	}
	if v.Issuer == nil && v.Manager == nil {
		return nil, fmt.Errorf("status: neither the issuer (%s) nor the manager (%s) answered", v.IssuerError, v.ManagerError)
	}
	return v, nil
}

func fetchIssuer(ctx context.Context, nc *nats.Conn, timeout time.Duration) (*Issuer, error) {
	nonce := make([]byte, messages.NonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	req, err := messages.Marshal(&messages.EvidenceRequest{V: messages.Version, Nonce: nonce})
	if err != nil {
		return nil, err
	}
	data, err := service.Request(ctx, nc, messages.SubjectEvidence, req, timeout)
	if err != nil {
		return nil, err
	}
	var r messages.EvidenceReply
	if err := messages.Decode(data, messages.MaxEvidenceReply, &r); err != nil {
		return nil, err
	}
	root, err := x509.ParseCertificate(r.Root)
	if err != nil {
		return nil, fmt.Errorf("root certificate: %w", err)
	}
	sum := sha256.Sum256(r.Root)
	return &Issuer{
		Backend: r.Backend, RootSHA256: hex.EncodeToString(sum[:]), RootSubject: root.Subject.CommonName,
		RootNotAfter: root.NotAfter.UTC(), PolicySHA256: hex.EncodeToString(r.PolicyHash), PolicyVersion: r.PolicyVersion,
	}, nil
}

func fetchManager(ctx context.Context, nc *nats.Conn, timeout time.Duration) (*manager.Status, error) {
	data, err := service.Request(ctx, nc, messages.SubjectStatus, nil, timeout)
	if err != nil {
		return nil, err
	}
	return manager.DecodeStatus(data)
}

// Print renders the view for people.
func (v *View) Print(w io.Writer) {
	if v.Issuer != nil {
		i := v.Issuer
		fmt.Fprintf(w, "issuer   backend %s, root %q sha256 %s (until %s), policy version %d sha256 %s (unverified: see 'cohort trust')\n",
			i.Backend, i.RootSubject, i.RootSHA256, i.RootNotAfter.Format(time.DateOnly), i.PolicyVersion, i.PolicySHA256)
	} else {
		fmt.Fprintf(w, "issuer   did not answer: %s\n", v.IssuerError)
	}
	if v.Manager == nil {
		fmt.Fprintf(w, "manager  did not answer: %s\n", v.ManagerError)
		return
	}
	m := v.Manager
	c := m.Counts
	fmt.Fprintf(w, "manager  %s, heartbeat %s: %d clusters, %d units (%d active, %d late, %d due for eviction)\n",
		m.Manager, m.Interval, c.Clusters, c.Units, c.Active, c.Late, c.Due)
	if m.Truncated {
		fmt.Fprintln(w, "         (more units than one reply lists; use --json and the manager's bucket for all)")
	}
	for _, cl := range m.Clusters {
		fmt.Fprintf(w, "\ncluster %s\n", cl.ID)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  UNIT\tTASK\tSTATE\tHTTPS\tLAST HEARTBEAT\tMEASUREMENT")
		for _, u := range cl.Units {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s ago\t%s…\n", u.Unit, u.Task, u.State, u.Addr,
				m.Time.Sub(u.LastHeartbeat).Round(time.Millisecond), strings.ToLower(u.Measurement[:min(16, len(u.Measurement))]))
		}
		tw.Flush()
	}
}

// Serving reports whether the view shows the deployment whole: the issuer
// and the manager answered, and cluster has at least units active units
// that have heartbeaten since since (a unit killed a moment ago still
// counts as active until it misses its heartbeats), none of them late. The
// error says what is missing.
func (v *View) Serving(cluster string, units int, since time.Time) error {
	switch {
	case v.Issuer == nil:
		return fmt.Errorf("status: the issuer did not answer: %s", v.IssuerError)
	case v.Manager == nil:
		return fmt.Errorf("status: the manager did not answer: %s", v.ManagerError)
	}
	active := 0
	for _, c := range v.Manager.Clusters {
		if c.ID != cluster {
			continue
		}
		for _, u := range c.Units {
			switch {
			case u.State != manager.Active:
				return fmt.Errorf("status: unit %s of cluster %s is %s", u.Unit, cluster, u.State)
			case u.LastHeartbeat.After(since):
				active++
			}
		}
	}
	if active < units {
		return fmt.Errorf("status: %d of %d units of cluster %s active and heard from since %s", active, units, cluster, since.UTC().Format("15:04:05.000"))
	}
	return nil
}

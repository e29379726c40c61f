package issuer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/cohort-dev/cohort/messages"
)

// FuzzParsePolicy: ParsePolicy never panics, refuses with ErrPolicy, and what
// it accepts is a policy within every bound.
func FuzzParsePolicy(f *testing.F) {
	f.Add(policyYAML(true))
	f.Add(policyYAML(false))
	f.Add(fmt.Appendf(nil, "version: 1\ntasks:\n  - name: a\n    measurements: [%x]\n", m1))
	f.Add(fmt.Appendf(nil, "version: 1\nvalidity: {root: 2h, task: 2s}\ntasks: [{name: a, signer: %x}]\n", signer))
	f.Add([]byte("version: 1\ntasks:\n  - &t {name: a, measurements: [" + fmt.Sprintf("%x", m1) + "]}\n  - *t\n"))
	f.Add([]byte("a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"))
	f.Add([]byte("version: 1\ntasks: !!binary aGVsbG8=\n"))
	f.Add([]byte(""))
	f.Add([]byte("{"))
	f.Add(append(policyYAML(true), "groups:\n  - id: mpc\n    tasks: [demo, signed, dbg]\n  - {id: pair, tasks: [dbg, demo]}\n"...))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data)
		if err != nil {
			if !errors.Is(err, ErrPolicy) || p != nil {
				t.Fatalf("refusal: %+v, %v", p, err)
			}
			return
		}
		if p.Version < 1 || p.Version > maxPolicyVersion || len(p.Tasks) == 0 || len(p.Tasks) > maxTasks {
			t.Fatalf("accepted version %d with %d tasks", p.Version, len(p.Tasks))
		}
		if p.Validity.Task < minTaskValidity || p.Validity.Task > p.Validity.Root || p.Validity.Root > maxValidity {
			t.Fatalf("accepted validity %+v", p.Validity)
		}
		if p.Hash() != sha256.Sum256(data) {
			t.Fatal("hash is not the file's")
		}
		for i := range p.Tasks {
			task := &p.Tasks[i]
			if got, ok := p.Task(task.Name); !ok || got != task {
				t.Fatalf("task %q is not found by name", task.Name)
			}
			if !messages.ValidTaskName(task.Name) {
				t.Fatalf("accepted task name %q", task.Name)
			}
			if len(task.measurements) == 0 && task.signer == nil {
				t.Fatalf("task %q accepts no code", task.Name)
			}
			for _, m := range task.measurements {
				if len(m) != measurementSize {
					t.Fatalf("measurement of %d bytes", len(m))
				}
			}
			if task.signer != nil && len(task.signer) != measurementSize {
				t.Fatalf("signer of %d bytes", len(task.signer))
			}
			if len(task.DNSNames)+len(task.ips) > maxNames || len(task.ips) != len(task.IPAddresses) {
				t.Fatalf("task %q: %d names, %d of %d addresses parsed", task.Name, len(task.DNSNames), len(task.ips), len(task.IPAddresses))
			}
		}
		if len(p.Groups) > maxGroups || p.Validity.Group < minTaskValidity || p.Validity.Group > p.Validity.Root {
			t.Fatalf("accepted %d groups, group validity %v", len(p.Groups), p.Validity.Group)
		}
		for i := range p.Groups {
			g := &p.Groups[i]
			if got, ok := p.Group(g.ID); !ok || got != g || !messages.ValidTaskName(g.ID) || len(g.Tasks) < 2 || len(g.Tasks) > maxGroupTasks {
				t.Fatalf("accepted group %+v", g)
			}
			for _, name := range g.Tasks {
				task, ok := p.Task(name)
				if !ok || !slices.Contains(task.groups, g.ID) {
					t.Fatalf("group %q counts task %q, which does not know it", g.ID, name)
				}
			}
		}
	})
}

// FuzzDecodePolicyRecord: the policy record's decoder never panics, and
// what it accepts is bounded.
func FuzzDecodePolicyRecord(f *testing.F) {
	good, _ := messages.Marshal(&policyRecord{V: recordVersion, Document: []byte("version: 1\n"), History: []messages.PolicyHistory{{Version: 1, Hash: make([]byte, 32)}}})
	f.Add(good)
	f.Add([]byte{0x84})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodePolicyRecord(data)
		if err != nil {
			return
		}
		if r.V != recordVersion || len(r.History) == 0 || len(r.History) > messages.MaxPolicyHistory || len(r.Document) == 0 {
			t.Fatalf("accepted %+v", r)
		}
	})
}

// FuzzDecodeRecoveryRecord: the recovery record, which a fresh issuer reads
// before it holds any key, never crashes its decoder.
func FuzzDecodeRecoveryRecord(f *testing.F) {
	good, _ := messages.Marshal(&recoveryRecord{V: recordVersion, KeyID: make([]byte, 16), Policy: 1, Threshold: 1, Root: make([]byte, 400),
		Shares: []recoveryShare{{Name: "a", Key: make([]byte, 32), Index: 1, Sealed: make([]byte, 80), Commit: make([]byte, 32), Signature: make([]byte, 71)}}})
	f.Add(good)
	f.Add([]byte{0x86, 0xa1, 'v'})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecoveryRecord(data)
		if err != nil {
			return
		}
		if int(r.Threshold) > len(r.Shares) || len(r.KeyID) != messages.KeyIDSize {
			t.Fatalf("accepted %+v", r)
		}
		for _, s := range r.Shares {
			if s.Index == 0 || len(s.Key) != messages.RecoveryKeySize {
				t.Fatalf("accepted share %+v", s)
			}
		}
	})
}

// FuzzOpenRecord: whatever is stored where a record stands, opening it
// under the state key either fails or gives back what was sealed there.
func FuzzOpenRecord(f *testing.F) {
	k, err := newStateKey(bytes.Repeat([]byte{9}, messages.StateKeySize))
	if err != nil {
		f.Fatal(err)
	}
	s := &store{bucket: "b", key: k}
	sealed, _ := s.seal("root", 7, []byte("plain"))
	f.Add(sealed, uint64(7), true)
	f.Add(sealed, uint64(8), true)
	f.Add([]byte{0x83}, uint64(0), false)
	f.Fuzz(func(t *testing.T, data []byte, over uint64, cas bool) {
		plain, err := s.open("root", &raw{data: data, over: over, cas: cas})
		if err != nil {
			return
		}
		if !cas || over != 7 || !bytes.Equal(plain, []byte("plain")) {
			t.Fatalf("opened %q over %d (cas %v)", plain, over, cas)
		}
	})
}

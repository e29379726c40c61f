package snp_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/snp"
	"github.com/cohort-dev/cohort/messages"
)

// TestEvidenceRoundTrip: ParseEvidence returns what Marshal encoded, with
// and without an endorsement; an empty endorsement travels as none.
func TestEvidenceRoundTrip(t *testing.T) {
	s := trusteeVCEK(t)
	for name, e := range map[string]snp.Evidence{
		"with VCEK":  {Report: s.report, Endorsement: s.cert},
		"no VCEK":    {Report: s.report},
		"empty VCEK": {Report: s.report, Endorsement: []byte{}},
	} {
		b, err := e.Marshal()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := snp.ParseEvidence(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got.Report, e.Report) || !bytes.Equal(got.Endorsement, e.Endorsement) {
			t.Errorf("%s: round trip changed the evidence", name)
		}
		if len(e.Endorsement) == 0 && got.Endorsement != nil {
			t.Errorf("%s: no endorsement came back as %v", name, got.Endorsement)
		}
	}
}

// TestEvidenceBounds: Marshal and ParseEvidence refuse evidence of the wrong
// shape, ParseEvidence with errors wrapping enclave.ErrInvalidEvidence.
func TestEvidenceBounds(t *testing.T) {
	s := trusteeVCEK(t)
	for name, e := range map[string]snp.Evidence{
		"short report":      {Report: s.report[:snp.ReportSize-1]},
		"long report":       {Report: append(copyOf(s.report), 0)},
		"no report":         {},
		"large endorsement": {Report: s.report, Endorsement: make([]byte, snp.MaxEndorsementSize+1)},
	} {
		if _, err := e.Marshal(); err == nil {
			t.Errorf("Marshal took %s", name)
		}
	}

	type wire struct {
		V           uint16 `msgpack:"v"`
		Report      []byte `msgpack:"report"`
		Endorsement []byte `msgpack:"endorsement"`
	}
	enc := func(w wire) []byte {
		b, err := messages.Marshal(&w)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := s.evidence(t)
	for name, b := range map[string][]byte{
		"version 0":         enc(wire{V: 0, Report: s.report}),
		"version 2":         enc(wire{V: 2, Report: s.report}),
		"short report":      enc(wire{V: 1, Report: s.report[:100]}),
		"empty endorsement": enc(wire{V: 1, Report: s.report, Endorsement: []byte{}}),
		"large endorsement": enc(wire{V: 1, Report: s.report, Endorsement: make([]byte, snp.MaxEndorsementSize+1)}),
		"trailing byte":     append(copyOf(good), 0),
		"truncated":         good[:len(good)-1],
		"raw report":        s.report,
		"empty":             nil,
		"too large":         make([]byte, snp.MaxEvidenceSize+1),
	} {
		if _, err := snp.ParseEvidence(b); !errors.Is(err, enclave.ErrInvalidEvidence) {
			t.Errorf("%s: ParseEvidence = %v, want enclave.ErrInvalidEvidence", name, err)
		}
	}
	if _, err := snp.ParseEvidence(enc(wire{V: 1, Report: s.report, Endorsement: s.cert})); err != nil {
		t.Errorf("the wire layout the test assumes is not the package's: %v", err)
	}
}

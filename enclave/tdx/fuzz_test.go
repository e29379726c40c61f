package tdx

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/testing/testdata"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/tdx/tdxtest"
)

// fuzzSeeds are the real samples and the fake's quotes of each layout.
func fuzzSeeds(f *testing.F, s *tdxtest.Signer) [][]byte {
	seeds := [][]byte{readSample(f, trusteeV4), readSample(f, trusteeV5), readSample(f, dcapQuote), testdata.RawQuote, testdata.RawQuoteV5}
	for _, l := range []struct {
		version int
		tdx15   bool
	}{{4, false}, {5, false}, {5, true}} {
		td := tdxtest.DefaultTD()
		td.Version, td.TDX15 = l.version, l.tdx15
		seeds = append(seeds, fakeQuote(f, s, td, [64]byte{1, 2, 3}))
	}
	return seeds
}

// mutate makes fuzz input from a seed: seeds[seed] with patch written at
// at (extending it where patch runs past the end), then cut to cut bytes
// when cut is not zero; or, for seed 255, patch itself. Fuzzing these few
// bytes rather than whole 5 KiB quotes keeps the fuzzer's minimizing of
// what it finds cheap, where each verification costs milliseconds.
func mutate(seeds [][]byte, seed uint8, at uint16, patch []byte, cut uint16) []byte {
	if seed == 255 {
		return patch
	}
	b := bytes.Clone(seeds[int(seed)%len(seeds)])
	off := int(at) % (len(b) + 1)
	if end := off + len(patch); end > len(b) {
		b = append(b, make([]byte, end-len(b))...)
	}
	copy(b[off:], patch)
	if cut != 0 && int(cut) < len(b) {
		b = b[:cut]
	}
	return b
}

// FuzzVerify: whatever the bytes, Verify neither panics nor lets
// go-tdx-guest panic behind decodeQuote's checks, refuses with
// ErrInvalidEvidence, and accepts only claims read from the bytes. The
// input is a seed (the real samples and the fake's quotes) patched and
// cut (see mutate).
func FuzzVerify(f *testing.F) {
	s := newSigner(f, tdxtest.Config{})
	seeds := fuzzSeeds(f, s)
	for i := range seeds {
		f.Add(uint8(i), uint16(0), []byte{}, uint16(0))
	}
	f.Add(uint8(0), uint16(0), []byte{3, 0}, uint16(0))                      // version 3
	f.Add(uint8(1), uint16(headerSize), []byte{3, 0, 0x90, 0x02}, uint16(0)) // a v5 body of the wrong size
	f.Add(uint8(2), uint16(v4Signature-4), []byte{0xff, 0xff, 0xff, 0x7f}, uint16(0))
	f.Add(uint8(5), uint16(v4QEAuth-2), []byte{0xff, 0xff}, uint16(0))
	f.Add(uint8(2), uint16(0), []byte{}, uint16(v4QEReport+10))
	f.Add(uint8(255), uint16(0), []byte("\x04\x00\x02\x00\x81\x00\x00\x00"), uint16(0))
	verifiers := []*Verifier{
		newVerifier(f, Config{Now: at(sampleTime)}),
		newVerifier(f, Config{Now: at("2025-06-20T00:00:00Z"), Collateral: fixed(dcapQVLCollateral(f))}),
		newVerifier(f, Config{Root: s.Root(), Collateral: fixed(fakeCollateral(f, s, tdxtest.CollateralConfig{}))}),
	}
	f.Fuzz(func(t *testing.T, seed uint8, at uint16, patch []byte, cut uint16) {
		b := mutate(seeds, seed, at, patch, cut)
		for _, v := range verifiers {
			c, err := v.Verify(t.Context(), b)
			if err != nil {
				if !errors.Is(err, enclave.ErrInvalidEvidence) || errors.Is(err, errParserPanic) {
					t.Fatalf("refusal %v", err)
				}
				continue
			}
			raw, derr := decodeQuote(b)
			if derr != nil {
				t.Fatalf("accepted what decodeQuote refuses: %v", derr)
			}
			if c.Backend != enclave.PlatformTDX || !bytes.Equal(c.UniqueID, raw.mrtd()) || c.TDX == nil ||
				!bytes.Equal(c.ReportData[:], raw.field(offReportData, 64)) || c.TCBStatus == "" {
				t.Fatalf("claims %+v", c)
			}
		}
	})
}

// FuzzDecodeQuote: decodeQuote never panics, and what it accepts
// go-tdx-guest's parser reads without panicking (no recover here). The
// input is a seed patched and cut, as FuzzVerify's.
func FuzzDecodeQuote(f *testing.F) {
	seeds := fuzzSeeds(f, newSigner(f, tdxtest.Config{}))
	for i := range seeds {
		f.Add(uint8(i), uint16(0), []byte{}, uint16(0))
	}
	f.Add(uint8(1), uint16(headerSize), []byte{3, 0, 0x88, 0x02, 0, 0}, uint16(0))
	f.Add(uint8(2), uint16(v4QEAuth-2), []byte{0xff, 0xff}, uint16(0))
	f.Add(uint8(255), uint16(0), []byte("\x05\x00\x02\x00\x81\x00\x00\x00"), uint16(0))
	f.Fuzz(func(t *testing.T, seed uint8, at uint16, patch []byte, cut uint16) {
		b := mutate(seeds, seed, at, patch, cut)
		q, err := decodeQuote(b)
		if err != nil {
			return
		}
		if (len(q.body) != bodySizeTDX10 && len(q.body) != bodySizeTDX15) || len(q.qeReport) != qeReportSize || len(q.chain) == 0 || q.length > len(b) {
			t.Fatalf("decoded %d-byte body, %d-byte QE report, %d-byte chain, length %d of %d", len(q.body), len(q.qeReport), len(q.chain), q.length, len(b))
		}
		p, err := abi.QuoteToProto(b)
		if err != nil {
			return
		}
		if again, err := abi.QuoteToAbiBytes(p); err != nil || !bytes.Equal(again, b) {
			t.Fatalf("go-tdx-guest parses what it does not encode back: %v", err)
		}
	})
}

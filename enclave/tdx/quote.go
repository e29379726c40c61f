package tdx

import (
	"encoding/binary"
	"fmt"
)

// MaxEvidence bounds the evidence Verify reads: a TDX quote with its PCK
// chain is about 5 KiB.
const MaxEvidence = 16 << 10

// The layout of a TDX quote (Intel's TDX DCAP Quote Generation Library and
// Quote Verification Library, appendix "Quote Format"), version 4 and 5.
const (
	headerSize         = 48
	bodySizeTDX10      = 584 // the TD quote body of TDX 1.0: TDREPORT's fields
	bodySizeTDX15      = 648 // TDX 1.5 adds TEE_TCB_SVN_2 and MRSERVICETD
	bodyTypeTDX10      = 2   // version 5's body types
	bodyTypeTDX15      = 3
	attestationKeyP256 = 2
	teeTypeTDX         = 0x81
	certTypeQEReport   = 6 // certification data: the QE report, its signature, auth data and PCK data
	certTypePCKChain   = 5 // PCK certification data: the PEM chain, leaf first
	sigSize            = 64
	keySize            = 64
	qeReportSize       = 384
	minSignedData      = sigSize + keySize + 6 + qeReportSize + sigSize + 2 + 6
)

// Offsets of the fields of a TD quote body.
const (
	offTEETCBSVN      = 0
	offMRSEAM         = 16
	offMRSignerSEAM   = 64
	offSEAMAttributes = 112
	offTDAttributes   = 120
	offXFAM           = 128
	offMRTD           = 136
	offMRConfigID     = 184
	offMROwner        = 232
	offMROwnerConfig  = 280
	offRTMR0          = 328
	offReportData     = 520
	offTEETCBSVN2     = 584
	offMRServiceTD    = 600
	mr                = 48 // the size of a measurement register (SHA-384)
)

// Offsets in the QE report (an SGX report body).
const (
	qeOffISVSVN     = 258
	qeOffReportData = 320
)

// rawQuote is a TDX quote whose layout has been checked: every length field
// agrees with the bytes, so go-tdx-guest's parser, which indexes by them,
// stays in bounds.
type rawQuote struct {
	version  uint16
	bodyType uint16 // version 5: bodyTypeTDX10 or bodyTypeTDX15; version 4: 0
	body     []byte // the TD quote body, 584 or 648 bytes
	qeReport []byte // the quoting enclave's report, 384 bytes
	chain    []byte // the PCK certificate chain, PEM
	length   int    // the quote's bytes, before any zero padding
}

// decodeQuote checks the layout of a TDX quote of version 4 or 5 and
// returns its parts. It does not check any signature. The quote may be
// followed by zero bytes (a buffer larger than the quote), and by nothing
// else.
func decodeQuote(b []byte) (*rawQuote, error) {
	if len(b) > MaxEvidence {
		return nil, fmt.Errorf("%d bytes, at most %d", len(b), MaxEvidence)
	}
	if len(b) < headerSize {
		return nil, fmt.Errorf("truncated: %d bytes, shorter than the %d-byte header", len(b), headerSize)
	}
	q := &rawQuote{version: binary.LittleEndian.Uint16(b[0:2])}
	if q.version != 4 && q.version != 5 {
		return nil, fmt.Errorf("quote version %d, want 4 or 5 (a TDX quote)", q.version)
	}
	if k := binary.LittleEndian.Uint16(b[2:4]); k != attestationKeyP256 {
		return nil, fmt.Errorf("attestation key type %d, want %d (ECDSA P-256)", k, attestationKeyP256)
	}
	if t := binary.LittleEndian.Uint32(b[4:8]); t != teeTypeTDX {
		return nil, fmt.Errorf("TEE type 0x%x, want 0x%x (TDX)", t, teeTypeTDX)
	}
	off := headerSize
	if q.version == 4 {
		q.body, off = take(b, off, bodySizeTDX10)
	} else {
		if len(b) < off+6 {
			return nil, fmt.Errorf("truncated: %d bytes, shorter than the body descriptor", len(b))
		}
		q.bodyType = binary.LittleEndian.Uint16(b[off:])
		size := binary.LittleEndian.Uint32(b[off+2:])
		off += 6
		switch {
		case q.bodyType == bodyTypeTDX10 && size == bodySizeTDX10, q.bodyType == bodyTypeTDX15 && size == bodySizeTDX15:
		case q.bodyType == bodyTypeTDX10 || q.bodyType == bodyTypeTDX15:
			return nil, fmt.Errorf("TD quote body of type %d is %d bytes, want %d", q.bodyType, size, map[uint16]int{bodyTypeTDX10: bodySizeTDX10, bodyTypeTDX15: bodySizeTDX15}[q.bodyType])
		default:
			return nil, fmt.Errorf("TD quote body type %d, want %d (TDX 1.0) or %d (TDX 1.5)", q.bodyType, bodyTypeTDX10, bodyTypeTDX15)
		}
		q.body, off = take(b, off, int(size))
	}
	if q.body == nil {
		return nil, fmt.Errorf("truncated: %d bytes, shorter than the TD quote body", len(b))
	}
	if len(b) < off+4 {
		return nil, fmt.Errorf("truncated: %d bytes, no signature data length", len(b))
	}
	signedSize := binary.LittleEndian.Uint32(b[off:])
	off += 4
	if signedSize < minSignedData || uint64(signedSize) > uint64(len(b)-off) {
		return nil, fmt.Errorf("signature data of %d bytes, and %d bytes are left (at least %d needed)", signedSize, len(b)-off, minSignedData)
	}
	signed := b[off : off+int(signedSize)]
	q.length = off + int(signedSize)
	for _, x := range b[q.length:] {
		if x != 0 {
			return nil, fmt.Errorf("%d bytes after the quote that are not zero padding", len(b)-q.length)
		}
	}
	// Signature data: the signature, the attestation key, then the
	// certification data, which must fill the rest exactly.
	cert := signed[sigSize+keySize:]
	if t := binary.LittleEndian.Uint16(cert); t != certTypeQEReport {
		return nil, fmt.Errorf("certification data type %d, want %d (QE report certification data)", t, certTypeQEReport)
	}
	if n := binary.LittleEndian.Uint32(cert[2:]); uint64(n) != uint64(len(cert)-6) {
		return nil, fmt.Errorf("certification data of %d bytes, and the signature data holds %d", n, len(cert)-6)
	}
	qe := cert[6:]
	q.qeReport = qe[:qeReportSize]
	auth := qe[qeReportSize+sigSize:]
	authSize := int(binary.LittleEndian.Uint16(auth))
	if len(auth) < 2+authSize+6 {
		return nil, fmt.Errorf("QE authentication data of %d bytes, and %d are left", authSize, len(auth)-2)
	}
	pck := auth[2+authSize:]
	if t := binary.LittleEndian.Uint16(pck); t != certTypePCKChain {
		return nil, fmt.Errorf("QE certification data type %d, want %d (PCK certificate chain)", t, certTypePCKChain)
	}
	if n := binary.LittleEndian.Uint32(pck[2:]); uint64(n) != uint64(len(pck)-6) || n == 0 {
		return nil, fmt.Errorf("PCK certificate chain of %d bytes, and %d are left", n, len(pck)-6)
	}
	q.chain = pck[6:]
	return q, nil
}

// take returns the n bytes of b at off and the offset after them, or nil
// when b is shorter.
func take(b []byte, off, n int) ([]byte, int) {
	if n < 0 || len(b)-off < n {
		return nil, off
	}
	return b[off : off+n], off + n
}

// field returns n bytes of the TD quote body at off.
func (q *rawQuote) field(off, n int) []byte { return q.body[off : off+n] }

// mrtd is the TD's measurement.
func (q *rawQuote) mrtd() []byte { return q.field(offMRTD, mr) }

// debug reports whether TD_ATTRIBUTES has bit 0 (DEBUG) set: the host may
// read and write the TD's memory and state.
func (q *rawQuote) debug() bool { return q.body[offTDAttributes]&1 != 0 }

// qeSVN is the quoting enclave's ISVSVN, from its report.
func (q *rawQuote) qeSVN() uint16 { return binary.LittleEndian.Uint16(q.qeReport[qeOffISVSVN:]) }

package dcap

import (
	"encoding/binary"
	"fmt"

	"github.com/cohort-dev/cohort/enclave"
)

// Layout of an SGX ECDSA quote, version 3 (Intel SGX ECDSA Quote Library
// API, appendix A), and of the Open Enclave report header before it.
const (
	quoteVersion  = 3
	attKeyECDSA   = 2 // ECDSA-256-with-P-256
	teeTypeSGX    = 0
	headerSize    = 48
	reportSize    = 384
	signedSize    = headerSize + reportSize // what the attestation key signs
	sigDataOffset = signedSize + 4          // after the signature data's length
	// The fixed part of the signature data: ISV report signature,
	// attestation key, QE report, QE report signature, QE auth data size.
	sigFixed = 64 + 64 + reportSize + 64 + 2
	// Certification data type 5: the PCK chain, PEM, leaf first.
	certPCKChain = 5

	oeHeaderSize    = 16
	oeHeaderVersion = 1 // OE_REPORT_HEADER_VERSION
	oeRemoteReport  = 2 // OE_REPORT_TYPE_SGX_REMOTE
	oeLocalReport   = 1 // OE_REPORT_TYPE_SGX_LOCAL

	// MaxEvidence bounds what Verify reads: a quote with Intel's chain is
	// under 5 KiB; Open Enclave caps its reports at 10 KiB.
	MaxEvidence = 64 << 10
)

// intelQEVendorID is the QE vendor ID of Intel's quoting enclave,
// 939A7233-F79C-4CA9-940A-0DB3957F0607.
const intelQEVendorID = "\x93\x9a\x72\x33\xf7\x9c\x4c\xa9\x94\x0a\x0d\xb3\x95\x7f\x06\x07"

// report is an SGX report body (sgx_report_body_t), of the application
// enclave or of the QE.
type report struct {
	CPUSVN       [16]byte
	MiscSelect   [4]byte
	ISVExtProdID [16]byte
	Attributes   [16]byte
	MREnclave    [32]byte
	MRSigner     [32]byte
	ConfigID     [64]byte
	ISVProdID    uint16
	ISVSVN       uint16
	ConfigSVN    uint16
	ISVFamilyID  [16]byte
	ReportData   [64]byte
}

func parseReport(b []byte) report {
	var r report
	copy(r.CPUSVN[:], b[0:16])
	copy(r.MiscSelect[:], b[16:20])
	// 20:32 reserved
	copy(r.ISVExtProdID[:], b[32:48])
	copy(r.Attributes[:], b[48:64])
	copy(r.MREnclave[:], b[64:96])
	// 96:128 reserved
	copy(r.MRSigner[:], b[128:160])
	// 160:192 reserved
	copy(r.ConfigID[:], b[192:256])
	r.ISVProdID = binary.LittleEndian.Uint16(b[256:258])
	r.ISVSVN = binary.LittleEndian.Uint16(b[258:260])
	r.ConfigSVN = binary.LittleEndian.Uint16(b[260:262])
	// 262:304 reserved
	copy(r.ISVFamilyID[:], b[304:320])
	copy(r.ReportData[:], b[320:384])
	return r
}

// debug reports whether ATTRIBUTES.DEBUG (flags bit 1) is set.
func (r *report) debug() bool { return r.Attributes[0]&0x02 != 0 }

// quote is a parsed SGX ECDSA quote v3. Its slices point into the bytes
// it was parsed from.
type quote struct {
	Version    uint16
	AttKeyType uint16
	TEEType    uint32
	QESVN      uint16
	PCESVN     uint16
	QEVendorID [16]byte
	Report     report
	Signed     []byte // header and ISV report: what the attestation key signs

	Signature      []byte // 64: r || s over Signed
	AttestationKey []byte // 64: X || Y of a P-256 point
	QEReportRaw    []byte // 384: what the PCK key signs
	QEReport       report
	QESignature    []byte // 64
	QEAuthData     []byte
	CertType       uint16
	CertData       []byte
}

// refuse is a refusal of evidence: it wraps enclave.ErrInvalidEvidence.
func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: dcap: "+format, append([]any{enclave.ErrInvalidEvidence}, args...)...)
}

// unwrap returns the quote in evidence: evidence itself when it is a raw
// quote, or the quote an Open Enclave remote report (oe_report_header_t:
// version uint32, report_type uint32, report_size uint64, all
// little-endian, then report_size bytes: what EGo's GetRemoteReport
// returns) carries.
func unwrap(evidence []byte) ([]byte, error) {
	if len(evidence) > MaxEvidence {
		return nil, refuse("evidence of %d bytes, at most %d", len(evidence), MaxEvidence)
	}
	// A quote starts with its version, 3, as a uint16: never a uint32 1.
	if len(evidence) < 4 || binary.LittleEndian.Uint32(evidence) != oeHeaderVersion {
		return evidence, nil
	}
	if len(evidence) < oeHeaderSize {
		return nil, refuse("Open Enclave report of %d bytes, shorter than its header", len(evidence))
	}
	switch t := binary.LittleEndian.Uint32(evidence[4:8]); t {
	case oeRemoteReport:
	case oeLocalReport:
		return nil, refuse("Open Enclave report is a local report (type 1), which only the enclave it targets can check")
	default:
		return nil, refuse("Open Enclave report of type %d, want %d (SGX remote)", t, oeRemoteReport)
	}
	n := binary.LittleEndian.Uint64(evidence[8:16])
	if n != uint64(len(evidence)-oeHeaderSize) {
		return nil, refuse("Open Enclave report says %d bytes follow its header, %d do", n, len(evidence)-oeHeaderSize)
	}
	return evidence[oeHeaderSize:], nil
}

// parseQuote reads an SGX ECDSA quote v3 with its signature data, all of b
// and nothing after it. It checks the form only: version, key type, TEE
// type and lengths.
func parseQuote(b []byte) (*quote, error) {
	if len(b) > MaxEvidence {
		return nil, refuse("quote of %d bytes, at most %d", len(b), MaxEvidence)
	}
	if len(b) < sigDataOffset {
		return nil, refuse("quote of %d bytes, shorter than its header and report (%d)", len(b), sigDataOffset)
	}
	q := &quote{
		Version:    binary.LittleEndian.Uint16(b[0:2]),
		AttKeyType: binary.LittleEndian.Uint16(b[2:4]),
		TEEType:    binary.LittleEndian.Uint32(b[4:8]),
		QESVN:      binary.LittleEndian.Uint16(b[8:10]),
		PCESVN:     binary.LittleEndian.Uint16(b[10:12]),
		Signed:     b[:signedSize],
	}
	copy(q.QEVendorID[:], b[12:28])
	if q.Version != quoteVersion {
		return nil, refuse("quote version %d, only %d is supported", q.Version, quoteVersion)
	}
	if q.AttKeyType != attKeyECDSA {
		return nil, refuse("attestation key type %d, only %d (ECDSA-256-with-P-256) is supported", q.AttKeyType, attKeyECDSA)
	}
	if q.TEEType != teeTypeSGX {
		return nil, refuse("TEE type %#x, not SGX (0)", q.TEEType)
	}
	if string(q.QEVendorID[:]) != intelQEVendorID {
		return nil, refuse("QE vendor ID %X is not Intel's", q.QEVendorID)
	}
	q.Report = parseReport(b[headerSize:signedSize])
	n := binary.LittleEndian.Uint32(b[signedSize:sigDataOffset])
	s := b[sigDataOffset:]
	if uint64(n) != uint64(len(s)) {
		return nil, refuse("signature data of %d bytes, the quote has %d after its report", n, len(s))
	}
	if len(s) < sigFixed {
		return nil, refuse("signature data of %d bytes, shorter than its fixed part (%d)", len(s), sigFixed)
	}
	q.Signature, s = s[:64], s[64:]
	q.AttestationKey, s = s[:64], s[64:]
	q.QEReportRaw, s = s[:reportSize], s[reportSize:]
	q.QEReport = parseReport(q.QEReportRaw)
	q.QESignature, s = s[:64], s[64:]
	authLen := int(binary.LittleEndian.Uint16(s))
	s = s[2:]
	if len(s) < authLen+6 {
		return nil, refuse("QE auth data of %d bytes and the certification data header do not fit in the %d bytes left", authLen, len(s))
	}
	q.QEAuthData, s = s[:authLen], s[authLen:]
	q.CertType = binary.LittleEndian.Uint16(s)
	certLen := binary.LittleEndian.Uint32(s[2:6])
	s = s[6:]
	if uint64(certLen) != uint64(len(s)) {
		return nil, refuse("certification data of %d bytes, %d left in the quote", certLen, len(s))
	}
	if q.CertType != certPCKChain {
		return nil, refuse("certification data type %d, only %d (PCK certificate chain) is supported", q.CertType, certPCKChain)
	}
	q.CertData = s
	return q, nil
}

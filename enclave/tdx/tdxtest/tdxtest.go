// Package tdxtest is a TEST FAKE of Intel TDX attestation, for tests only.
//
// A Signer holds a made-up chain in Intel's shape: a test root CA, a PCK
// platform CA, a PCK certificate with the SGX extensions (FMSPC, PCESVN,
// CPUSVN), a fake quoting enclave's report signed by the PCK key, and a TCB
// signing certificate. It signs TDX quotes (version 4 and 5) of any TD
// body, makes PCS collateral (TCB info, QE identity, CRLs) for them, and
// serves quotes through a fake configfs-tsm.
//
// Nothing it makes proves anything. The root's subject says "cohort TEST
// Intel root — not Intel" (its common name must be Intel's, "Intel SGX Root
// CA", which go-tdx-guest requires of every root); a tdx.Verifier accepts
// its quotes only when its Config.Root is this Signer's Root, and refuses
// them, naming the PCK chain, with the default (Intel's) root.
package tdxtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
)

// RootOrganization is the organization in the test root's subject.
const RootOrganization = "cohort TEST Intel root — not Intel"

// RootCRLURL is the test root's CRL distribution point; nothing serves it.
const RootCRLURL = "https://cohort-test.invalid/not-intel/IntelSGXRootCA.der"

// Defaults of Config.
var (
	DefaultFMSPC  = [6]byte{0x00, 0xc0, 0xff, 0xee, 0x00, 0x00}
	DefaultCPUSVN = [16]byte{4, 4, 2, 2, 4, 1, 0, 5}
)

const (
	defaultPCESVN = 13
	defaultQESVN  = 7
	tdQEProdID    = 2 // the TD quoting enclave's ISVPRODID
)

// Config configures a Signer. The zero value is a usable platform.
type Config struct {
	FMSPC  [6]byte  // the PCK certificate's FMSPC; zero: DefaultFMSPC
	PCESVN uint16   // the PCK certificate's PCESVN; zero: 13
	CPUSVN [16]byte // the PCK certificate's CPUSVN components; zero: DefaultCPUSVN
	QESVN  uint16   // the quoting enclave's ISVSVN; zero: 7
	// NotBefore and NotAfter bound every certificate; zero: 2020-01-01
	// and 2050-01-01.
	NotBefore, NotAfter time.Time
}

// Signer is a fake TDX platform: its chain, quoting enclave and
// attestation key. It is safe for concurrent use.
type Signer struct {
	cfg                            Config
	rootKey, caKey, pckKey, tcbKey *ecdsa.PrivateKey
	attKey                         *ecdsa.PrivateKey
	root, ca, pck, tcbSigning      *x509.Certificate
	qeMRSigner                     [32]byte
	certData                       []byte // the quote's certification data: QE report, its signature, auth data, PCK chain
}

// New returns a Signer with fresh keys.
func New(cfg Config) (*Signer, error) {
	if cfg.FMSPC == ([6]byte{}) {
		cfg.FMSPC = DefaultFMSPC
	}
	if cfg.CPUSVN == ([16]byte{}) {
		cfg.CPUSVN = DefaultCPUSVN
	}
	if cfg.PCESVN == 0 {
		cfg.PCESVN = defaultPCESVN
	}
	if cfg.QESVN == 0 {
		cfg.QESVN = defaultQESVN
	}
	if cfg.NotBefore.IsZero() {
		cfg.NotBefore = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if cfg.NotAfter.IsZero() {
		cfg.NotAfter = time.Date(2050, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	s := &Signer{cfg: cfg}
	for _, k := range []**ecdsa.PrivateKey{&s.rootKey, &s.caKey, &s.pckKey, &s.tcbKey, &s.attKey} {
		var err error
		if *k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, err
		}
	}
	name := func(cn string) pkix.Name {
		return pkix.Name{CommonName: cn, Organization: []string{"cohort TEST — not Intel"}, Country: []string{"US"}}
	}
	rootName := pkix.Name{CommonName: "Intel SGX Root CA", Organization: []string{RootOrganization}, Country: []string{"US"}}
	var err error
	if s.root, err = s.issue(&x509.Certificate{
		Subject: rootName, IsCA: true, MaxPathLen: 1, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		CRLDistributionPoints: []string{RootCRLURL},
	}, nil, s.rootKey); err != nil {
		return nil, err
	}
	if s.ca, err = s.issue(&x509.Certificate{
		Subject: name("Intel SGX PCK Platform CA"), IsCA: true, MaxPathLen: 0, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, CRLDistributionPoints: []string{RootCRLURL},
	}, s.root, s.caKey); err != nil {
		return nil, err
	}
	sgx, err := s.sgxExtension()
	if err != nil {
		return nil, err
	}
	// Six extensions, as Intel's PCK certificates have and go-tdx-guest
	// requires: authority and subject key IDs, CRL distribution points,
	// key usage, basic constraints and the SGX extension.
	if s.pck, err = s.issue(&x509.Certificate{
		Subject: name("Intel SGX PCK Certificate"), KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		SubjectKeyId: []byte("cohort test PCK"), CRLDistributionPoints: []string{"https://cohort-test.invalid/not-intel/pckcrl"},
		ExtraExtensions: []pkix.Extension{sgx},
	}, s.ca, s.pckKey); err != nil {
		return nil, err
	}
	if s.tcbSigning, err = s.issue(&x509.Certificate{
		Subject: name("Intel SGX TCB Signing"), KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		SubjectKeyId: []byte("cohort test TCB signing"), CRLDistributionPoints: []string{RootCRLURL},
	}, s.root, s.tcbKey); err != nil {
		return nil, err
	}
	s.qeMRSigner = sha256.Sum256([]byte("cohort TEST quoting enclave signer — not Intel"))
	if s.certData, err = s.makeCertData(); err != nil {
		return nil, err
	}
	return s, nil
}

// issue makes a certificate of template signed by parent (nil: itself)
// for key.
func (s *Signer) issue(template, parent *x509.Certificate, key *ecdsa.PrivateKey) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	template.SerialNumber = serial
	template.NotBefore, template.NotAfter = s.cfg.NotBefore, s.cfg.NotAfter
	template.BasicConstraintsValid = true
	signer := key
	if parent == nil {
		parent = template
	} else {
		signer = map[*x509.Certificate]*ecdsa.PrivateKey{s.root: s.rootKey, s.ca: s.caKey}[parent]
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("tdxtest: certificate %q: %w", template.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

// The SGX extension of PCK certificates (Intel's "SGX PCK Certificate and
// CRL Profile").
var (
	oidSGX       = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}
	oidPPID      = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 1}
	oidTCB       = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 2}
	oidPCEID     = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 3}
	oidFMSPC     = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 4}
	oidSGXType   = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 5}
	oidPCESVN    = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 2, 17}
	oidCPUSVN    = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 2, 18}
	sgxTypePlatf = asn1.Enumerated(1)
)

type (
	octetEntry struct {
		ID    asn1.ObjectIdentifier
		Value []byte
	}
	intEntry struct {
		ID    asn1.ObjectIdentifier
		Value int
	}
	enumEntry struct {
		ID    asn1.ObjectIdentifier
		Value asn1.Enumerated
	}
	seqEntry struct {
		ID    asn1.ObjectIdentifier
		Value []asn1.RawValue
	}
)

func (s *Signer) sgxExtension() (pkix.Extension, error) {
	raw := func(v any) (asn1.RawValue, error) {
		b, err := asn1.Marshal(v)
		return asn1.RawValue{FullBytes: b}, err
	}
	var tcb []asn1.RawValue
	for i := range 16 {
		oid := append(asn1.ObjectIdentifier{}, oidTCB...)
		r, err := raw(intEntry{append(oid, i+1), int(s.cfg.CPUSVN[i])})
		if err != nil {
			return pkix.Extension{}, err
		}
		tcb = append(tcb, r)
	}
	for _, v := range []any{intEntry{oidPCESVN, int(s.cfg.PCESVN)}, octetEntry{oidCPUSVN, s.cfg.CPUSVN[:]}} {
		r, err := raw(v)
		if err != nil {
			return pkix.Extension{}, err
		}
		tcb = append(tcb, r)
	}
	ppid := sha256.Sum256([]byte("cohort TEST PPID"))
	var entries []asn1.RawValue
	for _, v := range []any{
		octetEntry{oidPPID, ppid[:16]}, seqEntry{oidTCB, tcb}, octetEntry{oidPCEID, []byte{0, 0}},
		octetEntry{oidFMSPC, s.cfg.FMSPC[:]}, enumEntry{oidSGXType, sgxTypePlatf},
	} {
		r, err := raw(v)
		if err != nil {
			return pkix.Extension{}, err
		}
		entries = append(entries, r)
	}
	b, err := asn1.Marshal(entries)
	return pkix.Extension{Id: oidSGX, Value: b}, err
}

// makeCertData builds the quote's certification data, the same for every
// quote: the QE report binding the attestation key, its signature by the
// PCK key, the QE authentication data and the PCK chain.
func (s *Signer) makeCertData() ([]byte, error) {
	auth := make([]byte, 32)
	for i := range auth {
		auth[i] = byte(i)
	}
	var qe [384]byte
	qe[0x30] = 0x11 // ATTRIBUTES: INIT, MODE64BIT
	mrenclave := sha256.Sum256([]byte("cohort TEST QE MRENCLAVE — not Intel"))
	copy(qe[0x40:0x60], mrenclave[:])
	copy(qe[0x80:0xa0], s.qeMRSigner[:])
	binary.LittleEndian.PutUint16(qe[0x100:], tdQEProdID)
	binary.LittleEndian.PutUint16(qe[0x102:], s.cfg.QESVN)
	bind := sha256.Sum256(append(pubKey(s.attKey), auth...))
	copy(qe[0x140:], bind[:])
	qeSig, err := sign(s.pckKey, qe[:])
	if err != nil {
		return nil, err
	}
	var chain []byte
	for _, c := range []*x509.Certificate{s.pck, s.ca, s.root} {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	chain = append(chain, 0) // as Intel's quote library leaves it

	var inner []byte
	inner = append(inner, qe[:]...)
	inner = append(inner, qeSig...)
	inner = binary.LittleEndian.AppendUint16(inner, uint16(len(auth)))
	inner = append(inner, auth...)
	inner = binary.LittleEndian.AppendUint16(inner, 5)
	inner = binary.LittleEndian.AppendUint32(inner, uint32(len(chain)))
	inner = append(inner, chain...)

	out := binary.LittleEndian.AppendUint16(nil, 6)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(inner)))
	return append(out, inner...), nil
}

func pubKey(k *ecdsa.PrivateKey) []byte {
	b := make([]byte, 64)
	k.X.FillBytes(b[:32])
	k.Y.FillBytes(b[32:])
	return b
}

// sign signs the SHA-256 of msg, returning r || s.
func sign(k *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	r, ss, err := ecdsa.Sign(rand.Reader, k, h[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	ss.FillBytes(out[32:])
	return out, nil
}

// Root is the test root CA, the Config.Root that makes a tdx.Verifier
// accept this Signer's quotes.
func (s *Signer) Root() *x509.Certificate { return s.root }

// FMSPC is the platform's FMSPC, as its PCK certificate states it.
func (s *Signer) FMSPC() []byte { return append([]byte(nil), s.cfg.FMSPC[:]...) }

// PCKCertificate is the PCK leaf certificate in every quote.
func (s *Signer) PCKCertificate() *x509.Certificate { return s.pck }

// TD is the body of a quote: a trust domain's TDREPORT fields.
type TD struct {
	// Version is the quote's version: 4 or 5 (zero: 4).
	Version int
	// TDX15 makes a version 5 quote's body TDX 1.5's (type 3), with
	// TEETCBSVN2 and MRServiceTD; otherwise TDX 1.0's (type 2).
	TDX15                              bool
	TEETCBSVN                          [16]byte
	MRSEAM, MRSignerSEAM               [48]byte
	SEAMAttributes, TDAttributes, XFAM [8]byte
	MRTD, MRConfigID, MROwner          [48]byte
	MROwnerConfig                      [48]byte
	RTMRs                              [4][48]byte
	TEETCBSVN2                         [16]byte
	MRServiceTD                        [48]byte
}

// DefaultTD is a plausible TD: TDX module version 1 at SVN 5, SEPT_VE_DISABLE
// set and DEBUG clear, XFAM of x87, SSE, AVX, AVX-512 and AMX, and made-up
// measurements (MRTD is DefaultMRTD).
func DefaultTD() TD {
	td := TD{
		TEETCBSVN:    [16]byte{5, 1, 2},
		TDAttributes: [8]byte{0, 0, 0, 0x10}, // SEPT_VE_DISABLE
		XFAM:         [8]byte{0xe7, 0x42, 0x06},
		MRTD:         DefaultMRTD,
	}
	copy(td.MRSEAM[:], sha384("cohort TEST TDX module — not Intel"))
	for i := range td.RTMRs {
		copy(td.RTMRs[i][:], sha384(fmt.Sprintf("cohort TEST RTMR%d", i)))
	}
	return td
}

// DefaultMRTD is DefaultTD's measurement.
var DefaultMRTD = func() (m [48]byte) { copy(m[:], sha384("cohort TEST TD — not a real measurement")); return }()

func sha384(s string) []byte { h := sha512.Sum384([]byte(s)); return h[:] }

// Quote returns a TDX quote of td binding reportData, signed by the
// Signer's attestation key.
func (s *Signer) Quote(td TD, reportData [enclave.ReportDataSize]byte) ([]byte, error) {
	version := td.Version
	if version == 0 {
		version = 4
	}
	if version != 4 && version != 5 {
		return nil, fmt.Errorf("tdxtest: quote version %d, want 4 or 5", version)
	}
	var body []byte
	for _, f := range [][]byte{td.TEETCBSVN[:], td.MRSEAM[:], td.MRSignerSEAM[:], td.SEAMAttributes[:], td.TDAttributes[:],
		td.XFAM[:], td.MRTD[:], td.MRConfigID[:], td.MROwner[:], td.MROwnerConfig[:],
		td.RTMRs[0][:], td.RTMRs[1][:], td.RTMRs[2][:], td.RTMRs[3][:], reportData[:]} {
		body = append(body, f...)
	}
	q := binary.LittleEndian.AppendUint16(nil, uint16(version))
	q = binary.LittleEndian.AppendUint16(q, 2)                                                                    // ECDSA P-256
	q = binary.LittleEndian.AppendUint32(q, 0x81)                                                                 // TDX
	q = append(q, make([]byte, 4)...)                                                                             // reserved
	q = append(q, 0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07) // Intel's QE vendor ID
	q = append(q, make([]byte, 20)...)                                                                            // user data
	if version == 5 {
		typ := uint16(2)
		if td.TDX15 {
			typ = 3
			body = append(append(body, td.TEETCBSVN2[:]...), td.MRServiceTD[:]...)
		}
		q = binary.LittleEndian.AppendUint16(q, typ)
		q = binary.LittleEndian.AppendUint32(q, uint32(len(body)))
	}
	q = append(q, body...)
	sig, err := sign(s.attKey, q)
	if err != nil {
		return nil, err
	}
	q = binary.LittleEndian.AppendUint32(q, uint32(64+64+len(s.certData)))
	q = append(q, sig...)
	q = append(q, pubKey(s.attKey)...)
	return append(q, s.certData...), nil
}

// CollateralConfig shapes the collateral Collateral makes.
type CollateralConfig struct {
	// Issued and NextUpdate bound every piece (TCB info, QE identity,
	// CRLs); zero: the Signer's NotBefore and NotAfter.
	Issued, NextUpdate time.Time
	// TEETCBSVN is the TEE_TCB_SVN the best TCB level requires (and its
	// first two bytes, the TDX module's SVN and version, the module's
	// identity); zero: DefaultTD's.
	TEETCBSVN [16]byte
	// Platform, Module and QE are the statuses of the best TCB levels of
	// the platform, of the TDX module and of the quoting enclave; the
	// Signer's quotes of a TD at TEETCBSVN match them. Empty: UpToDate.
	// Below each there is a level of every SVN 0, OutOfDate.
	Platform, Module, QE string
	// Advisories are the best platform level's advisory IDs.
	Advisories []string
	// RevokePCK lists the Signer's PCK certificate in the PCK CRL.
	RevokePCK bool
	// FMSPC is the platform the TCB info is for; zero: the Signer's.
	FMSPC [6]byte
}

type (
	svn struct {
		SVN uint8 `json:"svn"`
	}
	tcbLevelJS struct {
		TCB struct {
			SGX    []svn  `json:"sgxtcbcomponents"`
			PCESVN uint16 `json:"pcesvn"`
			TDX    []svn  `json:"tdxtcbcomponents"`
		} `json:"tcb"`
		TCBDate     string   `json:"tcbDate"`
		TCBStatus   string   `json:"tcbStatus"`
		AdvisoryIDs []string `json:"advisoryIDs,omitempty"`
	}
	idLevelJS struct {
		TCB struct {
			ISVSVN uint16 `json:"isvsvn"`
		} `json:"tcb"`
		TCBDate     string   `json:"tcbDate"`
		TCBStatus   string   `json:"tcbStatus"`
		AdvisoryIDs []string `json:"advisoryIDs,omitempty"`
	}
	moduleJS struct {
		ID             string      `json:"id,omitempty"`
		MRSigner       string      `json:"mrsigner"`
		Attributes     string      `json:"attributes"`
		AttributesMask string      `json:"attributesMask"`
		TCBLevels      []idLevelJS `json:"tcbLevels,omitempty"`
	}
	tcbInfoJS struct {
		ID                      string       `json:"id"`
		Version                 int          `json:"version"`
		IssueDate               string       `json:"issueDate"`
		NextUpdate              string       `json:"nextUpdate"`
		FMSPC                   string       `json:"fmspc"`
		PCEID                   string       `json:"pceId"`
		TCBType                 int          `json:"tcbType"`
		TCBEvaluationDataNumber int          `json:"tcbEvaluationDataNumber"`
		TDXModule               moduleJS     `json:"tdxModule"`
		TDXModuleIdentities     []moduleJS   `json:"tdxModuleIdentities,omitempty"`
		TCBLevels               []tcbLevelJS `json:"tcbLevels"`
	}
	qeIdentityJS struct {
		ID                      string      `json:"id"`
		Version                 int         `json:"version"`
		IssueDate               string      `json:"issueDate"`
		NextUpdate              string      `json:"nextUpdate"`
		TCBEvaluationDataNumber int         `json:"tcbEvaluationDataNumber"`
		MiscSelect              string      `json:"miscselect"`
		MiscSelectMask          string      `json:"miscselectMask"`
		Attributes              string      `json:"attributes"`
		AttributesMask          string      `json:"attributesMask"`
		MRSigner                string      `json:"mrsigner"`
		ISVProdID               uint16      `json:"isvprodid"`
		TCBLevels               []idLevelJS `json:"tcbLevels"`
	}
)

// Collateral returns PCS collateral for the Signer's platform, signed
// under its test root.
func (s *Signer) Collateral(cc CollateralConfig) (*pcs.Collateral, error) {
	if cc.Issued.IsZero() {
		cc.Issued = s.cfg.NotBefore
	}
	if cc.NextUpdate.IsZero() {
		cc.NextUpdate = s.cfg.NotAfter
	}
	if cc.TEETCBSVN == ([16]byte{}) {
		cc.TEETCBSVN = DefaultTD().TEETCBSVN
	}
	if cc.FMSPC == ([6]byte{}) {
		cc.FMSPC = s.cfg.FMSPC
	}
	status := func(s string) string {
		if s == "" {
			return enclave.TCBUpToDate
		}
		return s
	}
	day := cc.Issued.UTC().Format(time.RFC3339)
	svns := func(b []byte) []svn {
		out := make([]svn, len(b))
		for i, x := range b {
			out[i] = svn{x}
		}
		return out
	}
	best := tcbLevelJS{TCBDate: day, TCBStatus: status(cc.Platform), AdvisoryIDs: cc.Advisories}
	best.TCB.SGX, best.TCB.PCESVN, best.TCB.TDX = svns(s.cfg.CPUSVN[:]), s.cfg.PCESVN, svns(cc.TEETCBSVN[:])
	low := tcbLevelJS{TCBDate: day, TCBStatus: "OutOfDate"}
	low.TCB.SGX, low.TCB.TDX = svns(make([]byte, 16)), svns(make([]byte, 16))
	zero48 := strings.Repeat("00", 48)
	info := tcbInfoJS{
		ID: "TDX", Version: 3, IssueDate: day, NextUpdate: cc.NextUpdate.UTC().Format(time.RFC3339),
		FMSPC: strings.ToUpper(hex.EncodeToString(cc.FMSPC[:])), PCEID: "0000", TCBEvaluationDataNumber: 17,
		TDXModule: moduleJS{MRSigner: zero48, Attributes: "0000000000000000", AttributesMask: "FFFFFFFFFFFFFFFF"},
		TCBLevels: []tcbLevelJS{best, low},
	}
	if v := cc.TEETCBSVN[1]; v > 0 {
		top := idLevelJS{TCBDate: day, TCBStatus: status(cc.Module)}
		top.TCB.ISVSVN = uint16(cc.TEETCBSVN[0])
		bottom := idLevelJS{TCBDate: day, TCBStatus: "OutOfDate"}
		info.TDXModuleIdentities = []moduleJS{{
			ID: "TDX_" + hex.EncodeToString([]byte{v}), MRSigner: zero48, Attributes: "0000000000000000", AttributesMask: "FFFFFFFFFFFFFFFF",
			TCBLevels: []idLevelJS{top, bottom},
		}}
	}
	qeTop := idLevelJS{TCBDate: day, TCBStatus: status(cc.QE)}
	qeTop.TCB.ISVSVN = s.cfg.QESVN
	qe := qeIdentityJS{
		ID: "TD_QE", Version: 2, IssueDate: day, NextUpdate: info.NextUpdate, TCBEvaluationDataNumber: 17,
		MiscSelect: "00000000", MiscSelectMask: "FFFFFFFF",
		Attributes: "11000000000000000000000000000000", AttributesMask: "FBFFFFFFFFFFFFFF0000000000000000",
		MRSigner: strings.ToUpper(hex.EncodeToString(s.qeMRSigner[:])), ISVProdID: tdQEProdID,
		TCBLevels: []idLevelJS{qeTop, {TCBDate: day, TCBStatus: "OutOfDate"}},
	}
	infoJSON, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	qeJSON, err := json.Marshal(qe)
	if err != nil {
		return nil, err
	}
	c := &pcs.Collateral{TCBInfo: infoJSON, QEIdentity: qeJSON}
	if c.TCBInfoSignature, err = sign(s.tcbKey, infoJSON); err != nil {
		return nil, err
	}
	if c.QEIdentitySignature, err = sign(s.tcbKey, qeJSON); err != nil {
		return nil, err
	}
	chain := func(certs ...*x509.Certificate) []byte {
		var b []byte
		for _, c := range certs {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		return b
	}
	c.TCBInfoIssuerChain = chain(s.tcbSigning, s.root)
	c.QEIdentityIssuerChain = chain(s.tcbSigning, s.root)
	c.PCKCRLIssuerChain = chain(s.ca, s.root)
	var revoked []x509.RevocationListEntry
	if cc.RevokePCK {
		revoked = append(revoked, x509.RevocationListEntry{SerialNumber: s.pck.SerialNumber, RevocationTime: cc.Issued})
	}
	if c.PCKCRL, err = x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: cc.Issued, NextUpdate: cc.NextUpdate, RevokedCertificateEntries: revoked,
	}, s.ca, s.caKey); err != nil {
		return nil, err
	}
	if c.RootCACRL, err = x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: cc.Issued, NextUpdate: cc.NextUpdate,
	}, s.root, s.rootKey); err != nil {
		return nil, err
	}
	return c, nil
}

// Provider is what the fake configfs-tsm says its provider is, as the
// kernel's TDX guest driver does.
const Provider = "tdx_guest"

// ConfigFS returns a fake configfs-tsm (for tdx.AttesterConfig.Client) whose
// reports are quotes of td binding the inblob written, from this Signer.
func (s *Signer) ConfigFS(td TD) configfsi.Client {
	sub := &faketsm.ReportSubsystem{
		MakeEntry: func() *faketsm.ReportEntry {
			return &faketsm.ReportEntry{
				InAttrs: map[string]*faketsm.ReportAttributeState{"inblob": {}},
				ROAttrs: map[string][]byte{"provider": []byte(Provider + "\n")}, // readable before any write, as the kernel's
			}
		},
		CheckInAttr: func(_ *faketsm.ReportEntry, attr string, contents []byte) error {
			if attr != "inblob" {
				return fmt.Errorf("tdxtest: attribute %q is not writable", attr)
			}
			if len(contents) > enclave.ReportDataSize {
				return syscall.EINVAL
			}
			return nil
		},
		ReadAttr: func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
			switch attr {
			case "provider":
				return []byte(Provider + "\n"), nil
			case "outblob":
				var rd [enclave.ReportDataSize]byte
				in := e.InAttrs["inblob"].Value
				if len(in) == 0 {
					return nil, syscall.EINVAL
				}
				copy(rd[:], in)
				return s.Quote(td, rd)
			}
			return nil, errors.New("tdxtest: no such attribute " + attr)
		},
		Random: rand.Reader,
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}
}

// Package collateral is the issuer's cache of what verifying hardware
// evidence needs beyond the vendors' roots: AMD's VCEK and VLEK certificates
// and Intel's PCS collateral (TCB info, QE identity, revocation lists, each
// with its signing chain). It is a folder: `cohort collateral import` fills
// it from files an operator obtained (from AMD's KDS and Intel's PCS, or a
// cloud provider's cache), and the issuer reads it.
//
// Guarantees: nothing here reaches the network, and nothing here decides
// trust. A file is taken in only if it parses as what its name says, but
// its signatures and dates are checked where it is used, by the verifiers
// (enclave/snp, enclave/tdx, enclave/dcap), at the time of each
// verification: expired collateral fails closed there, whatever this cache
// holds. Writes are atomic (a temporary file renamed), so a verification
// never reads half a file.
package collateral

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-sev-guest/kds"

	"github.com/cohort-dev/cohort/enclave"
	"github.com/cohort-dev/cohort/enclave/pcs"
)

// ErrNotFound: the cache holds no collateral for what was asked. It is
// returned wrapped in enclave.ErrCollateral as well.
var ErrNotFound = errors.New("collateral: not in the cache")

// maxFile bounds a file the cache reads.
const maxFile = 8 * pcs.MaxCollateral

// Kinds of entries.
const (
	KindIntel = "intel" // PCS collateral for one FMSPC of SGX or TDX, dcap-qvl's layout
	KindVCEK  = "vcek"  // an AMD VCEK certificate: one chip at one TCB
	KindVLEK  = "vlek"  // an AMD VLEK certificate: a cloud provider's key at one TCB
)

// Entry describes one piece of collateral in the cache.
type Entry struct {
	Kind     string    // KindIntel, KindVCEK or KindVLEK
	Platform string    // sgx or tdx (Intel); snp (AMD)
	ID       string    // the FMSPC and CA (Intel); the product line, chip id and TCB (AMD)
	File     string    // its file in the cache, relative to the folder
	Issued   time.Time // the TCB info's issue date; the certificate's NotBefore
	Expires  time.Time // the earliest next update of the TCB info, QE identity and CRLs; the certificate's NotAfter
}

// Dir is a collateral cache in a folder. It is safe for concurrent use:
// every read opens the file anew, so an import is seen at once.
type Dir struct {
	path string
}

// Open opens the cache in path, making the folder if it does not exist.
func Open(path string) (*Dir, error) {
	if path == "" {
		return nil, errors.New("collateral: a folder is required")
	}
	for _, sub := range []string{"intel", "amd"} {
		if err := os.MkdirAll(filepath.Join(path, sub), 0o755); err != nil {
			return nil, fmt.Errorf("collateral: %w", err)
		}
	}
	return &Dir{path: path}, nil
}

// Path is the cache's folder.
func (d *Dir) Path() string { return d.path }

func intelName(platform string, fmspc []byte, ca string) string {
	return filepath.Join("intel", fmt.Sprintf("%s-%x-%s.json", platform, fmspc, ca))
}

func vcekName(productLine string, chipID []byte, tcb uint64) string {
	return filepath.Join("amd", fmt.Sprintf("vcek-%s-%x-%016x.der", strings.ToLower(productLine), chipID, tcb))
}

func vlekName(productLine string, tcb uint64) string {
	return filepath.Join("amd", fmt.Sprintf("vlek-%s-%016x.der", strings.ToLower(productLine), tcb))
}

// Intel returns the PCS collateral for a platform (sgx or tdx) of fmspc
// whose PCK certificate the CA ca issued; an empty ca takes either.
func (d *Dir) Intel(platform string, fmspc []byte, ca string) (*pcs.Collateral, error) {
	cas := []string{ca}
	if ca == "" {
		cas = []string{pcs.CAProcessor, pcs.CAPlatform}
	}
	for _, ca := range cas {
		b, err := d.read(intelName(platform, fmspc, ca))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return pcs.ParseQVL(b)
	}
	return nil, fmt.Errorf("%w: %w: no PCS collateral for %s FMSPC %x (import it with `cohort collateral import`)", enclave.ErrCollateral, ErrNotFound, platform, fmspc)
}

// SGX is Intel for SGX, in the form enclave/dcap's Config takes.
func (d *Dir) SGX(fmspc []byte, ca string) (*pcs.Collateral, error) {
	return d.Intel(enclave.PlatformSGX, fmspc, ca)
}

// TDX is Intel for TDX, in the form enclave/tdx's Config takes.
func (d *Dir) TDX(fmspc []byte) (*pcs.Collateral, error) {
	return d.Intel(enclave.PlatformTDX, fmspc, "")
}

// Endorsement returns the DER of the VCEK (signer "VCEK") of chipID at the
// reported TCB, or of the VLEK (signer "VLEK") at that TCB, for a product
// line (Milan, Genoa, Turin).
func (d *Dir) Endorsement(productLine, signer string, chipID []byte, reportedTCB uint64) ([]byte, error) {
	var name string
	switch strings.ToUpper(signer) {
	case "VCEK":
		name = vcekName(productLine, chipID, reportedTCB)
	case "VLEK":
		name = vlekName(productLine, reportedTCB)
	default:
		return nil, fmt.Errorf("collateral: signer %q, want VCEK or VLEK", signer)
	}
	b, err := d.read(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %w: no %s for %s chip %x at TCB %016x (certificate fetching is off: import it with `cohort collateral import`)",
			enclave.ErrCollateral, ErrNotFound, strings.ToUpper(signer), productLine, chipID, reportedTCB)
	}
	return b, err
}

func (d *Dir) read(name string) ([]byte, error) {
	f, err := os.Open(filepath.Join(d.path, name))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("collateral: %w", err)
	}
	if st.Size() > maxFile {
		return nil, fmt.Errorf("collateral: %s is %d bytes, at most %d", name, st.Size(), maxFile)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil && st.Size() > 0 {
		return nil, fmt.Errorf("collateral: read %s: %w", name, err)
	}
	return b, nil
}

// Import takes a file into the cache: Intel PCS collateral in dcap-qvl's
// JSON layout, or an AMD VCEK or VLEK certificate (DER or PEM). What it is
// and where it goes are read from its contents. It returns the entry made.
func (d *Dir) Import(b []byte) (Entry, error) {
	e, data, err := Inspect(b)
	if err != nil {
		return Entry{}, err
	}
	if err := d.write(e.File, data); err != nil {
		return Entry{}, err
	}
	return e, nil
}

func (d *Dir) write(name string, data []byte) error {
	path := filepath.Join(d.path, name)
	tmp, err := os.CreateTemp(filepath.Dir(path), ".import-*")
	if err != nil {
		return fmt.Errorf("collateral: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("collateral: write %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("collateral: write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("collateral: %w", err)
	}
	return nil
}

// List returns the cache's entries, sorted by file. A file that does not
// parse is listed with its error rather than hidden.
func (d *Dir) List() ([]Entry, []error) {
	var out []Entry
	var errs []error
	for _, sub := range []string{"intel", "amd"} {
		names, err := os.ReadDir(filepath.Join(d.path, sub))
		if err != nil {
			errs = append(errs, fmt.Errorf("collateral: %w", err))
			continue
		}
		for _, n := range names {
			if n.IsDir() || strings.HasPrefix(n.Name(), ".") {
				continue
			}
			name := filepath.Join(sub, n.Name())
			b, err := d.read(name)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			e, _, err := Inspect(b)
			if err != nil {
				errs = append(errs, fmt.Errorf("collateral: %s: %w", name, err))
				continue
			}
			if e.File != name {
				errs = append(errs, fmt.Errorf("collateral: %s holds what belongs in %s", name, e.File))
				continue
			}
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.File, b.File) })
	return out, errs
}

// Inspect says what a file of collateral is, and returns the bytes the
// cache keeps of it (a certificate as DER).
func Inspect(b []byte) (Entry, []byte, error) {
	if len(b) > maxFile {
		return Entry{}, nil, fmt.Errorf("collateral: %d bytes, at most %d", len(b), maxFile)
	}
	if trimmed := strings.TrimSpace(string(b)); strings.HasPrefix(trimmed, "{") {
		return inspectIntel(b)
	}
	der := b
	if p, _ := pem.Decode(b); p != nil {
		if p.Type != "CERTIFICATE" {
			return Entry{}, nil, fmt.Errorf("collateral: PEM of %q, want a CERTIFICATE", p.Type)
		}
		der = p.Bytes
	}
	return inspectAMD(der)
}

// tcbInfoHead is what the cache reads of a TCB info or QE identity.
type tcbInfoHead struct {
	ID         string    `json:"id"`
	Version    int       `json:"version"`
	IssueDate  time.Time `json:"issueDate"`
	NextUpdate time.Time `json:"nextUpdate"`
	FMSPC      string    `json:"fmspc"`
}

func inspectIntel(b []byte) (Entry, []byte, error) {
	c, err := pcs.ParseQVL(b)
	if err != nil {
		return Entry{}, nil, err
	}
	var tcb, qe tcbInfoHead
	if err := json.Unmarshal(c.TCBInfo, &tcb); err != nil {
		return Entry{}, nil, fmt.Errorf("collateral: tcb_info: %w", err)
	}
	if err := json.Unmarshal(c.QEIdentity, &qe); err != nil {
		return Entry{}, nil, fmt.Errorf("collateral: qe_identity: %w", err)
	}
	var platform string
	switch {
	case tcb.ID == "SGX" && qe.ID == "QE":
		platform = enclave.PlatformSGX
	case tcb.ID == "TDX" && qe.ID == "TD_QE":
		platform = enclave.PlatformTDX
	default:
		return Entry{}, nil, fmt.Errorf("collateral: TCB info of %q with a QE identity of %q, want SGX with QE or TDX with TD_QE", tcb.ID, qe.ID)
	}
	fmspc, err := hex.DecodeString(tcb.FMSPC)
	if err != nil || len(fmspc) != 6 {
		return Entry{}, nil, fmt.Errorf("collateral: tcb_info: FMSPC %q is not 6 bytes of hex", tcb.FMSPC)
	}
	crl, err := x509.ParseRevocationList(c.PCKCRL)
	if err != nil {
		return Entry{}, nil, fmt.Errorf("collateral: pck_crl: %w", err)
	}
	root, err := x509.ParseRevocationList(c.RootCACRL)
	if err != nil {
		return Entry{}, nil, fmt.Errorf("collateral: root_ca_crl: %w", err)
	}
	var ca string
	switch crl.Issuer.CommonName {
	case pcs.CNPCKProcessorCA:
		ca = pcs.CAProcessor
	case pcs.CNPCKPlatformCA:
		ca = pcs.CAPlatform
	default:
		return Entry{}, nil, fmt.Errorf("collateral: the PCK CRL's issuer is %q, not one of Intel's PCK CAs", crl.Issuer.CommonName)
	}
	expires := tcb.NextUpdate
	for _, t := range []time.Time{qe.NextUpdate, crl.NextUpdate, root.NextUpdate} {
		if !t.IsZero() && t.Before(expires) {
			expires = t
		}
	}
	e := Entry{Kind: KindIntel, Platform: platform, ID: fmt.Sprintf("FMSPC %x, PCK %s CA", fmspc, ca),
		File: intelName(platform, fmspc, ca), Issued: tcb.IssueDate, Expires: expires}
	return e, b, nil
}

func inspectAMD(der []byte) (Entry, []byte, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Entry{}, nil, fmt.Errorf("collateral: neither PCS collateral (JSON) nor a certificate: %w", err)
	}
	signer := KindVCEK
	exts, err := kds.VcekCertificateExtensions(cert)
	if err != nil || cert.Subject.CommonName == "SEV-VLEK" {
		signer = KindVLEK
		if exts, err = kds.VlekCertificateExtensions(cert); err != nil {
			return Entry{}, nil, fmt.Errorf("collateral: a certificate that is neither a VCEK nor a VLEK: %w", err)
		}
	}
	line, _, _ := strings.Cut(exts.ProductName, "-")
	if line == "" {
		return Entry{}, nil, fmt.Errorf("collateral: %s names no product", strings.ToUpper(signer))
	}
	tcb := uint64(exts.TCBVersion)
	e := Entry{Kind: signer, Platform: enclave.PlatformSNP, Issued: cert.NotBefore, Expires: cert.NotAfter}
	if signer == KindVCEK {
		if len(exts.HWID) == 0 {
			return Entry{}, nil, errors.New("collateral: a VCEK without its chip id")
		}
		e.ID, e.File = fmt.Sprintf("%s chip %x… TCB %016x", line, exts.HWID[:8], tcb), vcekName(line, exts.HWID, tcb)
	} else {
		e.ID, e.File = fmt.Sprintf("%s TCB %016x (%s)", line, tcb, exts.CspID), vlekName(line, tcb)
	}
	return e, der, nil
}

package pcs

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// TCB statuses, Intel's words in TCB info and QE identity levels.
const (
	StatusUpToDate                          = "UpToDate"
	StatusSWHardeningNeeded                 = "SWHardeningNeeded"
	StatusConfigurationNeeded               = "ConfigurationNeeded"
	StatusConfigurationAndSWHardeningNeeded = "ConfigurationAndSWHardeningNeeded"
	StatusOutOfDate                         = "OutOfDate"
	StatusOutOfDateConfigurationNeeded      = "OutOfDateConfigurationNeeded"
	StatusRevoked                           = "Revoked"
)

// TCB info and QE identity IDs and versions this package reads.
const (
	TCBInfoSGX        = "SGX"
	TCBInfoTDX        = "TDX"
	TCBInfoVersion    = 3
	QEIdentityQE      = "QE"
	QEIdentityTDQE    = "TD_QE"
	QEIdentityVersion = 2
)

// Limits on the bodies, far above Intel's (about 20 levels of 20 advisories).
const (
	maxLevels      = 256
	maxAdvisories  = 256
	maxStringField = 128
)

// TCBInfo is a TCB info body (version 3): the TCB levels of the platforms of
// one FMSPC, best first.
type TCBInfo struct {
	ID                      string // TCBInfoSGX or TCBInfoTDX
	Version                 int
	IssueDate, NextUpdate   time.Time
	FMSPC                   []byte // 6 bytes
	PCEID                   []byte // 2 bytes
	TCBType                 int    // 0, the only type defined
	TCBEvaluationDataNumber uint32
	Levels                  []TCBLevel
	// TDX only: the TDX module's identity, and those of its versions.
	TDXModule           *TDXModule
	TDXModuleIdentities []TDXModuleIdentity
}

// TCBLevel is one level of a TCB info.
type TCBLevel struct {
	SGXComponents [16]uint8 // CPUSVN components, compared with the PCK certificate's
	PCESVN        uint16
	TDXComponents [16]uint8 // TDX only: compared with the TD's TEE_TCB_SVN
	Date          time.Time
	Status        string
	AdvisoryIDs   []string
}

// TDXModule is the identity of the TDX module in a TDX TCB info.
type TDXModule struct {
	MRSigner       []byte // 48 bytes
	Attributes     []byte // 8 bytes
	AttributesMask []byte // 8 bytes
}

// TDXModuleIdentity is the identity of one TDX module version ("TDX_01", ...).
type TDXModuleIdentity struct {
	ID string
	TDXModule
	Levels []IdentityLevel
}

// IdentityLevel is a level of an enclave (or TDX module) identity: an ISVSVN
// and the status of that SVN and those above it.
type IdentityLevel struct {
	ISVSVN      uint16
	Date        time.Time
	Status      string
	AdvisoryIDs []string
}

// QEIdentity is a QE identity body (version 2): what the quoting enclave's
// report must show, and the status of its ISVSVNs.
type QEIdentity struct {
	ID                      string // QEIdentityQE or QEIdentityTDQE
	Version                 int
	IssueDate, NextUpdate   time.Time
	TCBEvaluationDataNumber uint32
	// MiscSelect and Attributes as the report lays them out; a report
	// matches when its bytes under the mask equal these.
	MiscSelect, MiscSelectMask [4]byte
	Attributes, AttributesMask [16]byte
	MRSigner                   [32]byte
	ISVProdID                  uint16
	Levels                     []IdentityLevel
}

// The JSON layouts. Required numbers are pointers, so that a missing one is
// told from a zero.
type (
	svnJSON struct {
		SVN *int `json:"svn"`
	}
	tcbLevelJSON struct {
		TCB struct {
			SGX    []svnJSON `json:"sgxtcbcomponents"`
			TDX    []svnJSON `json:"tdxtcbcomponents"`
			PCESVN *int      `json:"pcesvn"`
		} `json:"tcb"`
		TCBDate     string   `json:"tcbDate"`
		TCBStatus   string   `json:"tcbStatus"`
		AdvisoryIDs []string `json:"advisoryIDs"`
	}
	identityLevelJSON struct {
		TCB struct {
			ISVSVN *int `json:"isvsvn"`
		} `json:"tcb"`
		TCBDate     string   `json:"tcbDate"`
		TCBStatus   string   `json:"tcbStatus"`
		AdvisoryIDs []string `json:"advisoryIDs"`
	}
	tdxModuleJSON struct {
		ID             string              `json:"id"`
		MRSigner       string              `json:"mrsigner"`
		Attributes     string              `json:"attributes"`
		AttributesMask string              `json:"attributesMask"`
		TCBLevels      []identityLevelJSON `json:"tcbLevels"`
	}
	tcbInfoJSON struct {
		ID                      string          `json:"id"`
		Version                 int             `json:"version"`
		IssueDate               string          `json:"issueDate"`
		NextUpdate              string          `json:"nextUpdate"`
		FMSPC                   string          `json:"fmspc"`
		PCEID                   string          `json:"pceId"`
		TCBType                 *int            `json:"tcbType"`
		TCBEvaluationDataNumber *uint32         `json:"tcbEvaluationDataNumber"`
		TCBLevels               []tcbLevelJSON  `json:"tcbLevels"`
		TDXModule               *tdxModuleJSON  `json:"tdxModule"`
		TDXModuleIdentities     []tdxModuleJSON `json:"tdxModuleIdentities"`
	}
	qeIdentityJSON struct {
		ID                      string              `json:"id"`
		Version                 int                 `json:"version"`
		IssueDate               string              `json:"issueDate"`
		NextUpdate              string              `json:"nextUpdate"`
		TCBEvaluationDataNumber *uint32             `json:"tcbEvaluationDataNumber"`
		MiscSelect              string              `json:"miscselect"`
		MiscSelectMask          string              `json:"miscselectMask"`
		Attributes              string              `json:"attributes"`
		AttributesMask          string              `json:"attributesMask"`
		MRSigner                string              `json:"mrsigner"`
		ISVProdID               *int                `json:"isvprodid"`
		TCBLevels               []identityLevelJSON `json:"tcbLevels"`
	}
)

// ParseTCBInfo reads a TCB info body (the JSON text of "tcbInfo"), version 3,
// id "SGX" or "TDX". It checks the form, not the signature.
func ParseTCBInfo(body []byte) (*TCBInfo, error) {
	var j tcbInfoJSON
	if err := decodeJSON(body, &j); err != nil {
		return nil, fmt.Errorf("pcs: TCB info: %w", err)
	}
	t := &TCBInfo{ID: j.ID, Version: j.Version}
	if err := t.fill(&j); err != nil {
		return nil, fmt.Errorf("pcs: TCB info: %w", err)
	}
	return t, nil
}

func (t *TCBInfo) fill(j *tcbInfoJSON) error {
	var err error
	if t.ID != TCBInfoSGX && t.ID != TCBInfoTDX {
		return fmt.Errorf("id %.32q, want %q or %q", t.ID, TCBInfoSGX, TCBInfoTDX)
	}
	if t.Version != TCBInfoVersion {
		return fmt.Errorf("version %d, want %d", t.Version, TCBInfoVersion)
	}
	if t.IssueDate, t.NextUpdate, err = dates(j.IssueDate, j.NextUpdate); err != nil {
		return err
	}
	if t.FMSPC, err = hexField("fmspc", j.FMSPC, 6); err != nil {
		return err
	}
	if t.PCEID, err = hexField("pceId", j.PCEID, 2); err != nil {
		return err
	}
	if j.TCBType == nil || *j.TCBType != 0 {
		return errors.New("tcbType missing or not 0")
	}
	if j.TCBEvaluationDataNumber == nil {
		return errors.New("no tcbEvaluationDataNumber")
	}
	t.TCBEvaluationDataNumber = *j.TCBEvaluationDataNumber
	if len(j.TCBLevels) == 0 || len(j.TCBLevels) > maxLevels {
		return fmt.Errorf("%d TCB levels, want 1 to %d", len(j.TCBLevels), maxLevels)
	}
	tdx := t.ID == TCBInfoTDX
	for i := range j.TCBLevels {
		l, err := tcbLevel(&j.TCBLevels[i], tdx)
		if err != nil {
			return fmt.Errorf("TCB level %d: %w", i, err)
		}
		t.Levels = append(t.Levels, l)
	}
	if !tdx {
		return nil
	}
	if j.TDXModule == nil {
		return errors.New("TDX TCB info without tdxModule")
	}
	if t.TDXModule, err = tdxModule(j.TDXModule); err != nil {
		return fmt.Errorf("tdxModule: %w", err)
	}
	if len(j.TDXModuleIdentities) > maxLevels {
		return fmt.Errorf("%d TDX module identities, at most %d", len(j.TDXModuleIdentities), maxLevels)
	}
	for i, m := range j.TDXModuleIdentities {
		mod, err := tdxModule(&m)
		if err != nil {
			return fmt.Errorf("tdxModuleIdentities %d: %w", i, err)
		}
		id := TDXModuleIdentity{ID: m.ID, TDXModule: *mod}
		if id.ID == "" || len(id.ID) > maxStringField {
			return fmt.Errorf("tdxModuleIdentities %d: no id", i)
		}
		if id.Levels, err = identityLevels(m.TCBLevels); err != nil {
			return fmt.Errorf("tdxModuleIdentities %d: %w", i, err)
		}
		t.TDXModuleIdentities = append(t.TDXModuleIdentities, id)
	}
	return nil
}

func tcbLevel(j *tcbLevelJSON, tdx bool) (TCBLevel, error) {
	var l TCBLevel
	if err := components(&l.SGXComponents, j.TCB.SGX); err != nil {
		return l, fmt.Errorf("sgxtcbcomponents: %w", err)
	}
	if tdx {
		if err := components(&l.TDXComponents, j.TCB.TDX); err != nil {
			return l, fmt.Errorf("tdxtcbcomponents: %w", err)
		}
	}
	if j.TCB.PCESVN == nil || *j.TCB.PCESVN < 0 || *j.TCB.PCESVN > 0xffff {
		return l, errors.New("pcesvn missing or out of range")
	}
	l.PCESVN = uint16(*j.TCB.PCESVN)
	var err error
	l.Date, l.Status, l.AdvisoryIDs, err = levelCommon(j.TCBDate, j.TCBStatus, j.AdvisoryIDs)
	return l, err
}

func components(to *[16]uint8, from []svnJSON) error {
	if len(from) != len(to) {
		return fmt.Errorf("%d components, want %d", len(from), len(to))
	}
	for i, c := range from {
		if c.SVN == nil || *c.SVN < 0 || *c.SVN > 0xff {
			return fmt.Errorf("component %d: svn missing or out of range", i)
		}
		to[i] = uint8(*c.SVN)
	}
	return nil
}

func tdxModule(j *tdxModuleJSON) (*TDXModule, error) {
	var m TDXModule
	var err error
	if m.MRSigner, err = hexField("mrsigner", j.MRSigner, 48); err != nil {
		return nil, err
	}
	if m.Attributes, err = hexField("attributes", j.Attributes, 8); err != nil {
		return nil, err
	}
	if m.AttributesMask, err = hexField("attributesMask", j.AttributesMask, 8); err != nil {
		return nil, err
	}
	return &m, nil
}

func identityLevels(js []identityLevelJSON) ([]IdentityLevel, error) {
	if len(js) == 0 || len(js) > maxLevels {
		return nil, fmt.Errorf("%d TCB levels, want 1 to %d", len(js), maxLevels)
	}
	out := make([]IdentityLevel, 0, len(js))
	for i, j := range js {
		if j.TCB.ISVSVN == nil || *j.TCB.ISVSVN < 0 || *j.TCB.ISVSVN > 0xffff {
			return nil, fmt.Errorf("TCB level %d: isvsvn missing or out of range", i)
		}
		l := IdentityLevel{ISVSVN: uint16(*j.TCB.ISVSVN)}
		var err error
		if l.Date, l.Status, l.AdvisoryIDs, err = levelCommon(j.TCBDate, j.TCBStatus, j.AdvisoryIDs); err != nil {
			return nil, fmt.Errorf("TCB level %d: %w", i, err)
		}
		out = append(out, l)
	}
	return out, nil
}

// levelCommon checks what every kind of level has. The status is checked
// against the known ones only when a level matches, so that a status Intel
// adds later refuses only the platforms at that level.
func levelCommon(date, status string, advisories []string) (time.Time, string, []string, error) {
	d, err := time.Parse(time.RFC3339, date)
	if err != nil {
		return d, "", nil, fmt.Errorf("tcbDate: %w", err)
	}
	if status == "" || len(status) > maxStringField {
		return d, "", nil, errors.New("tcbStatus missing or too long")
	}
	if len(advisories) > maxAdvisories {
		return d, "", nil, fmt.Errorf("%d advisory IDs, at most %d", len(advisories), maxAdvisories)
	}
	for _, a := range advisories {
		if a == "" || len(a) > maxStringField {
			return d, "", nil, errors.New("advisory ID empty or too long")
		}
	}
	return d, status, advisories, nil
}

// ParseQEIdentity reads a QE identity body (the JSON text of
// "enclaveIdentity"), version 2, id "QE" or "TD_QE". It checks the form, not
// the signature.
func ParseQEIdentity(body []byte) (*QEIdentity, error) {
	var j qeIdentityJSON
	if err := decodeJSON(body, &j); err != nil {
		return nil, fmt.Errorf("pcs: QE identity: %w", err)
	}
	q := &QEIdentity{ID: j.ID, Version: j.Version}
	if err := q.fill(&j); err != nil {
		return nil, fmt.Errorf("pcs: QE identity: %w", err)
	}
	return q, nil
}

func (q *QEIdentity) fill(j *qeIdentityJSON) error {
	var err error
	if q.ID != QEIdentityQE && q.ID != QEIdentityTDQE {
		return fmt.Errorf("id %.32q, want %q or %q", q.ID, QEIdentityQE, QEIdentityTDQE)
	}
	if q.Version != QEIdentityVersion {
		return fmt.Errorf("version %d, want %d", q.Version, QEIdentityVersion)
	}
	if q.IssueDate, q.NextUpdate, err = dates(j.IssueDate, j.NextUpdate); err != nil {
		return err
	}
	if j.TCBEvaluationDataNumber == nil {
		return errors.New("no tcbEvaluationDataNumber")
	}
	q.TCBEvaluationDataNumber = *j.TCBEvaluationDataNumber
	for _, f := range []struct {
		name, hex string
		to        []byte
	}{
		{"miscselect", j.MiscSelect, q.MiscSelect[:]},
		{"miscselectMask", j.MiscSelectMask, q.MiscSelectMask[:]},
		{"attributes", j.Attributes, q.Attributes[:]},
		{"attributesMask", j.AttributesMask, q.AttributesMask[:]},
		{"mrsigner", j.MRSigner, q.MRSigner[:]},
	} {
		b, err := hexField(f.name, f.hex, len(f.to))
		if err != nil {
			return err
		}
		copy(f.to, b)
	}
	if j.ISVProdID == nil || *j.ISVProdID < 0 || *j.ISVProdID > 0xffff {
		return errors.New("isvprodid missing or out of range")
	}
	q.ISVProdID = uint16(*j.ISVProdID)
	q.Levels, err = identityLevels(j.TCBLevels)
	return err
}

// decodeJSON reads one bounded JSON object into v.
func decodeJSON(body []byte, v any) error {
	if len(body) > MaxCollateral {
		return fmt.Errorf("%d bytes, at most %d", len(body), MaxCollateral)
	}
	if len(body) == 0 || body[0] != '{' {
		return errors.New("not a JSON object")
	}
	return json.Unmarshal(body, v)
}

func dates(issue, next string) (time.Time, time.Time, error) {
	i, err := time.Parse(time.RFC3339, issue)
	if err != nil {
		return i, i, fmt.Errorf("issueDate: %w", err)
	}
	n, err := time.Parse(time.RFC3339, next)
	if err != nil {
		return i, n, fmt.Errorf("nextUpdate: %w", err)
	}
	if !i.Before(n) {
		return i, n, errors.New("issueDate not before nextUpdate")
	}
	return i, n, nil
}

func hexField(name, s string, n int) ([]byte, error) {
	if len(s) != 2*n {
		return nil, fmt.Errorf("%s: %d hex digits, want %d", name, len(s), 2*n)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return b, nil
}

// knownStatus reports whether s is one of Intel's TCB statuses.
func knownStatus(s string) bool {
	switch s {
	case StatusUpToDate, StatusSWHardeningNeeded, StatusConfigurationNeeded,
		StatusConfigurationAndSWHardeningNeeded, StatusOutOfDate,
		StatusOutOfDateConfigurationNeeded, StatusRevoked:
		return true
	}
	return false
}

// MatchSGX finds the TCB level of an SGX platform by Intel's algorithm: the
// first level, in the order the TCB info gives them (Intel's, best first),
// whose 16 SGX TCB components are each at most the PCK certificate's and
// whose PCESVN is at most the certificate's. No level matching means the
// TCB is not supported: an error.
func (t *TCBInfo) MatchSGX(components [16]uint8, pcesvn uint16) (TCBLevel, error) {
	if t.ID != TCBInfoSGX {
		return TCBLevel{}, fmt.Errorf("pcs: TCB info is for %s, not SGX", t.ID)
	}
	return t.match(components, pcesvn, nil)
}

// MatchTDX finds the TCB level of a TDX platform: as MatchSGX, and the TD's
// TEE_TCB_SVN must be at least the level's TDX components, compared from
// index 0 when TEE_TCB_SVN[1] is 0 and from index 2 otherwise (where the
// module's minor version lives; the module identity is checked apart).
func (t *TCBInfo) MatchTDX(components [16]uint8, pcesvn uint16, teeTCBSVN [16]uint8) (TCBLevel, error) {
	if t.ID != TCBInfoTDX {
		return TCBLevel{}, fmt.Errorf("pcs: TCB info is for %s, not TDX", t.ID)
	}
	return t.match(components, pcesvn, &teeTCBSVN)
}

func (t *TCBInfo) match(components [16]uint8, pcesvn uint16, tee *[16]uint8) (TCBLevel, error) {
	from := 0
	if tee != nil && tee[1] > 0 {
		from = 2
	}
	for _, l := range t.Levels {
		if !atLeast(components[:], l.SGXComponents[:]) || pcesvn < l.PCESVN {
			continue
		}
		if tee != nil && !atLeast(tee[from:], l.TDXComponents[from:]) {
			continue
		}
		if !knownStatus(l.Status) {
			return l, fmt.Errorf("pcs: TCB level matched has status %.32q, which is not known", l.Status)
		}
		return l, nil
	}
	return TCBLevel{}, fmt.Errorf("pcs: no TCB level of FMSPC %X matches components %v and PCESVN %d: TCB not supported", t.FMSPC, components, pcesvn)
}

// atLeast reports whether have[i] >= want[i] for every i.
func atLeast(have, want []uint8) bool {
	for i := range want {
		if have[i] < want[i] {
			return false
		}
	}
	return true
}

// QEReport is what a QE identity constrains of the quoting enclave's report.
type QEReport struct {
	MiscSelect [4]byte  // as the report lays it out
	Attributes [16]byte // flags then XFRM
	MRSigner   [32]byte
	ISVProdID  uint16
	ISVSVN     uint16
}

// Match checks a quoting enclave's report against the identity (as Intel's
// QVL does): MISCSELECT and ATTRIBUTES under their masks, MRSIGNER and
// ISVPRODID exactly; then it finds the first level (highest first) whose
// ISVSVN is at most the report's. A report below every level is refused.
func (q *QEIdentity) Match(r QEReport) (IdentityLevel, error) {
	for i := range r.MiscSelect {
		if r.MiscSelect[i]&q.MiscSelectMask[i] != q.MiscSelect[i] {
			return IdentityLevel{}, fmt.Errorf("pcs: %s report MISCSELECT %X under mask %X is not %X", q.ID, r.MiscSelect, q.MiscSelectMask, q.MiscSelect)
		}
	}
	for i := range r.Attributes {
		if r.Attributes[i]&q.AttributesMask[i] != q.Attributes[i] {
			return IdentityLevel{}, fmt.Errorf("pcs: %s report ATTRIBUTES %X under mask %X is not %X", q.ID, r.Attributes, q.AttributesMask, q.Attributes)
		}
	}
	if r.MRSigner != q.MRSigner {
		return IdentityLevel{}, fmt.Errorf("pcs: %s report MRSIGNER %X is not %X", q.ID, r.MRSigner, q.MRSigner)
	}
	if r.ISVProdID != q.ISVProdID {
		return IdentityLevel{}, fmt.Errorf("pcs: %s report ISVPRODID %d is not %d", q.ID, r.ISVProdID, q.ISVProdID)
	}
	for _, l := range q.Levels {
		if l.ISVSVN > r.ISVSVN {
			continue
		}
		switch l.Status {
		case StatusUpToDate, StatusOutOfDate, StatusRevoked:
			return l, nil
		}
		return l, fmt.Errorf("pcs: %s level of ISVSVN %d has status %.32q, which is not known", q.ID, l.ISVSVN, l.Status)
	}
	return IdentityLevel{}, fmt.Errorf("pcs: %s ISVSVN %d is below every level of the identity", q.ID, r.ISVSVN)
}

// CombineStatus gives the status of a platform from its TCB level's status
// and its QE's, as Intel's QVL converges them: a QE out of date makes
// UpToDate and SWHardeningNeeded OutOfDate, and ConfigurationNeeded and
// ConfigurationAndSWHardeningNeeded OutOfDateConfigurationNeeded (statuses
// already out of date stay); a revoked QE makes the platform Revoked; an
// up-to-date QE leaves the platform's status.
func CombineStatus(platform, qe string) (string, error) {
	if !knownStatus(platform) {
		return "", fmt.Errorf("pcs: TCB status %.32q is not known", platform)
	}
	switch qe {
	case StatusUpToDate:
		return platform, nil
	case StatusRevoked:
		return StatusRevoked, nil
	case StatusOutOfDate:
		switch platform {
		case StatusUpToDate, StatusSWHardeningNeeded:
			return StatusOutOfDate, nil
		case StatusConfigurationNeeded, StatusConfigurationAndSWHardeningNeeded:
			return StatusOutOfDateConfigurationNeeded, nil
		}
		return platform, nil
	}
	return "", fmt.Errorf("pcs: QE TCB status %.32q is not known", qe)
}

// CombineAdvisories is the union of the platform level's advisories and the
// QE level's, each once, the platform's first.
func CombineAdvisories(platform, qe []string) []string {
	out := slices.Clone(platform)
	for _, a := range qe {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

package pcs

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

// sgxOID is the OID of the extension of a PCK certificate that carries the
// platform's SGX facts, 1.2.840.113741.1.13.1 (Intel SGX PCK Certificate and
// CRL Profile), followed by arcs.
func sgxOID(arcs ...int) asn1.ObjectIdentifier {
	return append(asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}, arcs...)
}

// Limits on the SGX extension: Intel's is about 550 bytes, with 7 entries
// and 18 in its TCB.
const (
	maxSGXExtension  = 4096
	maxSGXEntries    = 16
	maxTCBEntries    = 32
	maxConfigEntries = 8
)

// SGX types, as the PCK certificate's SGX Type gives them.
const (
	SGXTypeStandard              = 0
	SGXTypeScalable              = 1
	SGXTypeScalableWithIntegrity = 2
)

// PCKExtensions are the SGX facts of a PCK certificate.
type PCKExtensions struct {
	PPID []byte // 16 bytes, encrypted platform provisioning ID
	// Components are the 16 SGX TCB component SVNs (CPUSVN as the TCB
	// levels compare it), PCESVN the PCE's; CPUSVN the raw 16 bytes.
	Components [16]uint8
	PCESVN     uint16
	CPUSVN     [16]byte
	PCEID      []byte // 2 bytes
	FMSPC      []byte // 6 bytes
	SGXType    int    // SGXTypeStandard, SGXTypeScalable, SGXTypeScalableWithIntegrity
	// PlatformInstanceID and Config appear only in certificates of the
	// PCK Platform CA (multi-package platforms); nil otherwise.
	PlatformInstanceID []byte // 16 bytes
	Config             *PlatformConfig
}

// PlatformConfig is the Configuration of a platform PCK certificate: each
// field is nil where the certificate leaves it out.
type PlatformConfig struct {
	DynamicPlatform, CachedKeys, SMTEnabled *bool
}

// entry is one OID = value pair, the shape of every list in the extension.
type entry struct {
	OID   asn1.ObjectIdentifier
	Value asn1.RawValue
}

// ParsePCKExtensions reads the SGX extension of a PCK certificate.
func ParsePCKExtensions(cert *x509.Certificate) (*PCKExtensions, error) {
	var found *PCKExtensions
	for _, e := range cert.Extensions {
		if !e.Id.Equal(sgxOID()) {
			continue
		}
		if found != nil {
			return nil, errors.New("pcs: PCK certificate has two SGX extensions")
		}
		x, err := ParseSGXExtension(e.Value)
		if err != nil {
			return nil, err
		}
		found = x
	}
	if found == nil {
		return nil, errors.New("pcs: PCK certificate has no SGX extension (OID 1.2.840.113741.1.13.1)")
	}
	return found, nil
}

// ParseSGXExtension reads the DER value of the SGX extension (OID
// 1.2.840.113741.1.13.1): a sequence of OID = value pairs. PPID, TCB, PCE-ID,
// FMSPC and SGX Type must each be there exactly once; PlatformInstanceID and
// Configuration may be; other OIDs are ignored, duplicates refused.
func ParseSGXExtension(der []byte) (*PCKExtensions, error) {
	if len(der) > maxSGXExtension {
		return nil, fmt.Errorf("pcs: SGX extension of %d bytes, at most %d", len(der), maxSGXExtension)
	}
	entries, err := parseEntries(der, maxSGXEntries)
	if err != nil {
		return nil, fmt.Errorf("pcs: SGX extension: %w", err)
	}
	x := &PCKExtensions{}
	seen := map[int]bool{}
	for _, e := range entries {
		n, ok := arc(e.OID, sgxOID())
		if !ok {
			continue
		}
		if seen[n] {
			return nil, fmt.Errorf("pcs: SGX extension: entry %v twice", e.OID)
		}
		seen[n] = true
		switch n {
		case 1:
			x.PPID, err = octets(e.Value, 16)
		case 2:
			err = x.parseTCB(e.Value)
		case 3:
			x.PCEID, err = octets(e.Value, 2)
		case 4:
			x.FMSPC, err = octets(e.Value, 6)
		case 5:
			var t asn1.Enumerated
			err = unmarshalExact(e.Value.FullBytes, &t)
			if err == nil && (t < SGXTypeStandard || t > SGXTypeScalableWithIntegrity) {
				err = fmt.Errorf("SGX Type %d unknown", t)
			}
			x.SGXType = int(t)
		case 6:
			x.PlatformInstanceID, err = octets(e.Value, 16)
		case 7:
			x.Config, err = parseConfig(e.Value)
		}
		if err != nil {
			return nil, fmt.Errorf("pcs: SGX extension: entry %v: %w", e.OID, err)
		}
	}
	for n, name := range map[int]string{1: "PPID", 2: "TCB", 3: "PCE-ID", 4: "FMSPC", 5: "SGX Type"} {
		if !seen[n] {
			return nil, fmt.Errorf("pcs: SGX extension: no %s", name)
		}
	}
	return x, nil
}

// parseTCB reads the TCB: components 1 to 16 and PCESVN (17) as INTEGERs,
// CPUSVN (18) as 16 octets, each exactly once.
func (x *PCKExtensions) parseTCB(v asn1.RawValue) error {
	entries, err := parseEntries(v.FullBytes, maxTCBEntries)
	if err != nil {
		return err
	}
	tcbOID := sgxOID(2)
	var seen [19]bool
	for _, e := range entries {
		n, ok := arc(e.OID, tcbOID)
		if !ok || n < 1 || n > 18 {
			continue
		}
		if seen[n] {
			return fmt.Errorf("TCB entry %v twice", e.OID)
		}
		seen[n] = true
		if n == 18 {
			b, err := octets(e.Value, 16)
			if err != nil {
				return fmt.Errorf("CPUSVN: %w", err)
			}
			copy(x.CPUSVN[:], b)
			continue
		}
		var svn int
		if err := unmarshalExact(e.Value.FullBytes, &svn); err != nil {
			return fmt.Errorf("TCB entry %v: %w", e.OID, err)
		}
		if n == 17 {
			if svn < 0 || svn > 0xffff {
				return fmt.Errorf("PCESVN %d out of range", svn)
			}
			x.PCESVN = uint16(svn)
			continue
		}
		if svn < 0 || svn > 0xff {
			return fmt.Errorf("TCB component %d SVN %d out of range", n, svn)
		}
		x.Components[n-1] = uint8(svn)
	}
	for n := 1; n <= 18; n++ {
		if !seen[n] {
			return fmt.Errorf("TCB entry %d missing", n)
		}
	}
	return nil
}

// parseConfig reads the Configuration's three booleans.
func parseConfig(v asn1.RawValue) (*PlatformConfig, error) {
	entries, err := parseEntries(v.FullBytes, maxConfigEntries)
	if err != nil {
		return nil, err
	}
	cfgOID := sgxOID(7)
	c := &PlatformConfig{}
	for _, e := range entries {
		n, ok := arc(e.OID, cfgOID)
		if !ok {
			continue
		}
		var b bool
		if err := unmarshalExact(e.Value.FullBytes, &b); err != nil {
			return nil, fmt.Errorf("configuration entry %v: %w", e.OID, err)
		}
		var to **bool
		switch n {
		case 1:
			to = &c.DynamicPlatform
		case 2:
			to = &c.CachedKeys
		case 3:
			to = &c.SMTEnabled
		default:
			continue
		}
		if *to != nil {
			return nil, fmt.Errorf("configuration entry %v twice", e.OID)
		}
		*to = &b
	}
	return c, nil
}

// parseEntries reads a SEQUENCE OF SEQUENCE { OID, value } of at most
// limit entries, with nothing after it.
func parseEntries(der []byte, limit int) ([]entry, error) {
	var seq asn1.RawValue
	if err := unmarshalExact(der, &seq); err != nil {
		return nil, err
	}
	if seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return nil, errors.New("not a SEQUENCE")
	}
	var out []entry
	for rest := seq.Bytes; len(rest) > 0; {
		if len(out) == limit {
			return nil, fmt.Errorf("more than %d entries", limit)
		}
		var e entry
		var err error
		rest, err = asn1.Unmarshal(rest, &e)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// arc reports the last arc of oid when oid is base followed by one arc.
func arc(oid, base asn1.ObjectIdentifier) (int, bool) {
	if len(oid) != len(base)+1 || !oid[:len(base)].Equal(base) {
		return 0, false
	}
	return oid[len(base)], true
}

// octets reads an OCTET STRING of exactly n bytes.
func octets(v asn1.RawValue, n int) ([]byte, error) {
	var b []byte
	if err := unmarshalExact(v.FullBytes, &b); err != nil {
		return nil, err
	}
	if len(b) != n {
		return nil, fmt.Errorf("%d octets, want %d", len(b), n)
	}
	return b, nil
}

// unmarshalExact is asn1.Unmarshal refusing trailing bytes.
func unmarshalExact(der []byte, v any) error {
	rest, err := asn1.Unmarshal(der, v)
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%d bytes after the value", len(rest))
	}
	return nil
}

// Marshal encodes x as the DER value of an SGX extension, in Intel's order:
// the inverse of ParseSGXExtension, for test CAs and round trips.
func (x *PCKExtensions) Marshal() ([]byte, error) {
	var err error
	pair := func(oid asn1.ObjectIdentifier, v any) entry {
		b, e := asn1.Marshal(v)
		if err == nil {
			err = e
		}
		return entry{OID: oid, Value: asn1.RawValue{FullBytes: b}}
	}
	var tcb []entry
	for i, svn := range x.Components {
		tcb = append(tcb, pair(sgxOID(2, i+1), int(svn)))
	}
	tcb = append(tcb, pair(sgxOID(2, 17), int(x.PCESVN)), pair(sgxOID(2, 18), x.CPUSVN[:]))
	all := []entry{
		pair(sgxOID(1), x.PPID),
		pair(sgxOID(2), tcb),
		pair(sgxOID(3), x.PCEID),
		pair(sgxOID(4), x.FMSPC),
		pair(sgxOID(5), asn1.Enumerated(x.SGXType)),
	}
	if x.PlatformInstanceID != nil {
		all = append(all, pair(sgxOID(6), x.PlatformInstanceID))
	}
	if x.Config != nil {
		cfg := []entry{}
		for i, b := range []*bool{x.Config.DynamicPlatform, x.Config.CachedKeys, x.Config.SMTEnabled} {
			if b != nil {
				cfg = append(cfg, pair(sgxOID(7, i+1), *b))
			}
		}
		all = append(all, pair(sgxOID(7), cfg))
	}
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(all)
}

//go:build linux

package snp

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"
	"github.com/google/go-sev-guest/client"

	"github.com/cohort-dev/cohort/enclave"
)

// tsmProvider is the provider configfs-tsm names for SEV-SNP guests.
const tsmProvider = "sev_guest"

// detectSource finds the guest's interface to the AMD secure processor:
// configfs-tsm when its provider is sev_guest, else /dev/sev-guest.
func detectSource() (ReportSource, error) {
	c, tsmErr := probeTSM()
	if tsmErr == nil {
		return &tsmSource{client: c}, nil
	}
	ioctl := &client.LinuxIoctlQuoteProvider{}
	if ioctl.IsSupported() {
		return ioctlSource{p: ioctl}, nil
	}
	return nil, fmt.Errorf("%w: snp: not an SEV-SNP guest: configfs-tsm: %v; /dev/sev-guest does not open", enclave.ErrUnsupported, tsmErr)
}

// probeTSM checks that configfs-tsm is there and its provider is sev_guest,
// reading the provider of a report entry it then removes. (go-sev-guest's
// LinuxConfigFsQuoteProvider.IsSupported does the same but leaves the entry.)
func probeTSM() (configfsi.Client, error) {
	c, err := linuxtsm.MakeClient()
	if err != nil {
		return nil, err
	}
	r, err := report.CreateOpenReport(c)
	if err != nil {
		return nil, err
	}
	p, err := r.ReadOption("provider")
	if err = errors.Join(err, r.Destroy()); err != nil {
		return nil, err
	}
	if err := checkProvider(string(p)); err != nil {
		return nil, err
	}
	return c, nil
}

func checkProvider(p string) error {
	if got := strings.TrimSpace(p); got != tsmProvider {
		return fmt.Errorf("configfs-tsm provider is %q, not %q", got, tsmProvider)
	}
	return nil
}

// tsmSource gets reports through configfs-tsm, with the host's certificate
// table as its auxblob.
type tsmSource struct {
	client configfsi.Client
}

func (s *tsmSource) GetReport(reportData [64]byte, vmpl *uint) ([]byte, []byte, error) {
	req := &report.Request{InBlob: reportData[:], GetAuxBlob: true}
	if vmpl != nil {
		req.Privilege = &report.Privilege{Level: *vmpl}
	}
	resp, err := report.Get(s.client, req)
	if err != nil {
		return nil, nil, fmt.Errorf("configfs-tsm: %w", err)
	}
	if err := checkProvider(resp.Provider); err != nil {
		return nil, nil, err
	}
	return resp.OutBlob, resp.AuxBlob, nil
}

// ioctlSource gets extended reports through /dev/sev-guest, by go-sev-guest's
// client (which throttles itself to one command per 2 s by default, its
// -self_throttle_duration flag).
type ioctlSource struct {
	p *client.LinuxIoctlQuoteProvider
}

func (s ioctlSource) GetReport(reportData [64]byte, vmpl *uint) ([]byte, []byte, error) {
	var level uint
	if vmpl != nil {
		level = *vmpl
	}
	raw, err := s.p.GetRawQuoteAtLevel(reportData, level)
	if err != nil {
		return nil, nil, fmt.Errorf("/dev/sev-guest: %w", err)
	}
	if len(raw) < ReportSize {
		return nil, nil, fmt.Errorf("/dev/sev-guest: %d bytes, less than a report", len(raw))
	}
	return raw[:ReportSize], raw[ReportSize:], nil
}

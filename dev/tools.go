package dev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cohort-dev/cohort/access"
)

// admittedFile lists, one a line, the users the running dev's NATS server
// admits: `cohort user add` waits for its user to appear there.
const admittedFile = "admitted"

func writeAdmitted(dataDir string, users []string) error {
	return writeFileAtomic(filepath.Join(dataDir, admittedFile), []byte(strings.Join(users, "\n")+"\n"), 0o600)
}

// ErrNotRunning is WaitAdmitted's answer when no dev runs on the folder: the
// next one admits the user when it starts.
var ErrNotRunning = errors.New("dev: no cohort dev runs on the data folder")

// WaitAdmitted waits until the dev running on dataDir admits user, or ctx
// is done. Without a running dev, it returns ErrNotRunning at once.
func WaitAdmitted(ctx context.Context, dataDir, user string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if !running(dataDir) {
			return ErrNotRunning
		}
		if b, err := os.ReadFile(filepath.Join(dataDir, admittedFile)); err == nil && slices.Contains(strings.Fields(string(b)), user) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dev: the cohort dev on %s has not admitted user %s: %w", dataDir, user, ctx.Err())
		case <-tick.C:
		}
	}
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// natsContextMarker is the description of a natscli context dev wrote: dev
// writes over a context of that name only if it bears the marker, never
// over one of the user's own.
const natsContextMarker = "cohort dev: the operator of "

// natsContext is natscli's context file, the fields dev sets.
type natsContext struct {
	Description string `json:"description"`
	URL         string `json:"url"`
	NKey        string `json:"nkey"`
	InboxPrefix string `json:"inbox_prefix"`
	// APIPrefix reaches the manager's account's JetStream, where the audit
	// stream and the members bucket are: stream ls, kv ls, stream info.
	APIPrefix string `json:"jetstream_api_prefix"`
}

// natsContextDir is where natscli keeps its contexts.
func natsContextDir() (string, error) {
	base := os.Getenv("XDG_CONFIG_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		base = filepath.Join(home, ".config")
	}
	return filepath.Join(base, "nats", "context"), nil
}

// WriteNatsContext writes natscli's context name for the operator of the
// dev on dataDir: `nats --context NAME micro ls` then needs no other flag.
// It returns the file's path. A context of that name that dev did not write
// is left alone, with an error saying so.
func WriteNatsContext(name, url, operatorCreds, dataDir string) (string, error) {
	if name == "" || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
		return "", fmt.Errorf("dev: natscli context name %q: a plain file name", name)
	}
	dir, err := natsContextDir()
	if err != nil {
		return "", fmt.Errorf("dev: natscli context: %w", err)
	}
	path := filepath.Join(dir, name+".json")
	if b, err := os.ReadFile(path); err == nil {
		var old natsContext
		if json.Unmarshal(b, &old) != nil || !strings.HasPrefix(old.Description, natsContextMarker) {
			return "", fmt.Errorf("dev: natscli context %s is not one dev wrote: left alone (give --nats-context another name)", path)
		}
	}
	creds, err := filepath.Abs(operatorCreds)
	if err != nil {
		return "", err
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", err
	}
	b, err := json.MarshalIndent(natsContext{
		Description: natsContextMarker + abs, URL: url, NKey: creds, InboxPrefix: "_INBOX.operator", APIPrefix: access.APIPrefix(access.ManagerAccount),
	}, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("dev: natscli context: %w", err)
	}
	if err := writeFileAtomic(path, append(b, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("dev: natscli context: %w", err)
	}
	return path, nil
}

package sim

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// SealSecretFile is the file, in a data folder, that holds the simulated
// CPU's seal secret.
const SealSecretFile = "sim-cpu-seal.key"

// LoadOrCreateSealSecret reads the simulated CPU seal secret from path, or
// creates it (mode 0600) if there is none. A real CPU keeps this secret in
// hardware; the simulation keeps it in a file, which is one more reason its
// sealing protects nothing against whoever can read the folder.
func LoadOrCreateSealSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if len(b) != SealSecretSize {
			return nil, fmt.Errorf("sim: seal secret %s is %d bytes, want %d", path, len(b), SealSecretSize)
		}
		return b, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("sim: read seal secret: %w", err)
	}
	b = make([]byte, SealSecretSize)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("sim: draw seal secret: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("sim: seal secret folder: %w", err)
	}
	// Write a temporary file and link it into place: a reader never sees a
	// half-written secret, and of two processes creating it at once one wins.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".seal-*")
	if err != nil {
		return nil, fmt.Errorf("sim: create seal secret: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("sim: write seal secret: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("sim: write seal secret: %w", err)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
		return LoadOrCreateSealSecret(path) // created concurrently: read theirs
	} else if err != nil {
		return nil, fmt.Errorf("sim: create seal secret: %w", err)
	}
	return b, nil
}

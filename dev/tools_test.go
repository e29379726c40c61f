package dev

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseTask(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "mytask")
	if err := os.WriteFile(exe, []byte("a build"), 0o700); err != nil {
		t.Fatal(err)
	}
	tk, err := ParseTask("mytask=" + exe)
	if err != nil || tk.Name != "mytask" || tk.Exe != exe || len(tk.Measurement) != 64 {
		t.Fatalf("ParseTask: %+v, %v", tk, err)
	}
	if err := os.WriteFile(exe, []byte("another build"), 0o700); err != nil {
		t.Fatal(err)
	}
	if again, _ := ParseTask("mytask=" + exe); again.Measurement == tk.Measurement {
		t.Fatal("a rebuild measures the same")
	}
	for _, bad := range []struct{ arg, want string }{
		{"mytask", "NAME=PATH"},
		{"=" + exe, "NAME=PATH"},
		{"Bad_Name=" + exe, "not valid"},
		{"demo=" + exe, "dev's own"},
		{"dev=" + exe, "dev's own"},
		{"mytask=" + filepath.Join(dir, "missing"), "build it first"},
		{"mytask=" + dir, "build it first"},
	} {
		if _, err := ParseTask(bad.arg); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseTask(%q) = %v, want an error saying %q", bad.arg, err, bad.want)
		}
	}
}

func TestWriteNatsContext(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	data := t.TempDir()
	path, err := WriteNatsContext("cohort-dev", "nats://127.0.0.1:4222", filepath.Join(data, "creds", "operator.creds"), data)
	if err != nil {
		t.Fatal(err)
	}
	var c natsContext
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &c); err != nil || c.InboxPrefix != "_INBOX.operator" || !filepath.IsAbs(c.NKey) || c.URL != "nats://127.0.0.1:4222" {
		t.Fatalf("context %s: %+v, %v", b, c, err)
	}
	// Written again over its own; never over one of the user's.
	if _, err := WriteNatsContext("cohort-dev", "nats://127.0.0.1:4223", c.NKey, data); err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(filepath.Dir(path), "mine.json")
	if err := os.WriteFile(mine, []byte(`{"url":"nats://example:4222"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteNatsContext("mine", "nats://127.0.0.1:4222", c.NKey, data); err == nil || !strings.Contains(err.Error(), "left alone") {
		t.Fatalf("over a user's context: %v", err)
	}
	if b, _ := os.ReadFile(mine); string(b) != `{"url":"nats://example:4222"}` {
		t.Fatalf("the user's context was changed: %s", b)
	}
	if _, err := WriteNatsContext("../x", "nats://127.0.0.1:4222", c.NKey, data); err == nil {
		t.Fatal("a context name with a path was taken")
	}
}

func TestWaitAdmitted(t *testing.T) {
	data := t.TempDir()
	if err := WaitAdmitted(context.Background(), data, "dave"); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("without a dev: %v", err)
	}
	unlock, err := lock(data) // this process stands for a running dev
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := lock(data); err == nil || !strings.Contains(err.Error(), "another cohort dev") {
		t.Fatalf("a second dev on the folder: %v", err)
	}
	if err := writeAdmitted(data, []string{"alice", "dave"}); err != nil {
		t.Fatal(err)
	}
	if err := WaitAdmitted(context.Background(), data, "dave"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := WaitAdmitted(ctx, data, "erin"); err == nil || !strings.Contains(err.Error(), "has not admitted") {
		t.Fatalf("a user not admitted: %v", err)
	}
}

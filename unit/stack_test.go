package unit

import (
	"errors"
	"strings"
	"testing"
)

func TestStackDropsArguments(t *testing.T) {
	trace := "goroutine 7 [running]:\n" +
		"main.(*T).handle({0xc000012345, 0x34313131}, 0x2a)\n\t/src/main.go:10 +0x1d\n" +
		"created by main.run in goroutine 1\n\t/src/main.go:20 +0x9\n"
	got := stack([]byte(trace))
	want := "goroutine 7 [running]:\n" +
		"main.(*T).handle(...)\n\t/src/main.go:10 +0x1d\n" +
		"created by main.run in goroutine 1\n\t/src/main.go:20 +0x9\n"
	if got != want {
		t.Fatalf("stack:\n%s\nwant:\n%s", got, want)
	}
	if strings.Contains(got, "0x3431") {
		t.Fatal("an argument word survived")
	}
}

type opaque struct{ s string }

func TestPanicText(t *testing.T) {
	if got := panicText("card 4111"); strings.Contains(got, "4111") || !strings.Contains(got, "string") {
		t.Errorf("a string panic: %q", got)
	}
	if got := panicText(errors.New("secret")); strings.Contains(got, "secret") {
		t.Errorf("an error panic: %q", got)
	}
	if got := panicText(opaque{"secret"}); strings.Contains(got, "secret") || !strings.Contains(got, "unit.opaque") {
		t.Errorf("a struct panic: %q", got)
	}
}

package main

import "testing"

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1048576": 1 << 20, "2GiB": 2 << 30, "512 MiB": 512 << 20, "3KiB": 3 << 10, "1TiB": 1 << 40, "7B": 7} {
		var b byteSize
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("%q: %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5GiB", "2GB", "GiB", "9999999999TiB", "0x10"} {
		var b byteSize
		if err := b.Set(in); err == nil {
			t.Errorf("%q: %d, want refused", in, b)
		}
	}
	for in, want := range map[byteSize]string{0: "0", 2 << 30: "2GiB", 1536 << 20: "1536MiB", 1000: "1000B"} {
		if got := in.String(); got != want {
			t.Errorf("%d prints %q, want %q", int64(in), got, want)
		}
	}
}

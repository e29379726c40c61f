package shamir

import (
	"bytes"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"strings"
	"testing"
)

func randomSecret(t testing.TB, size int) []byte {
	t.Helper()
	s := make([]byte, size)
	if _, err := crand.Read(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// pick returns the shares at the given indexes, in that order.
func pick(shares []Share, idx []int) []Share {
	out := make([]Share, len(idx))
	for i, j := range idx {
		out[i] = shares[j]
	}
	return out
}

// subsets calls f with every k-subset of 0..n-1.
func subsets(n, k int, f func([]int)) {
	idx := make([]int, k)
	var rec func(start, depth int)
	rec = func(start, depth int) {
		if depth == k {
			f(append([]int(nil), idx...))
			return
		}
		for i := start; i <= n-(k-depth); i++ {
			idx[depth] = i
			rec(i+1, depth+1)
		}
	}
	rec(0, 0)
}

func TestRoundTrip(t *testing.T) {
	cases := [][2]int{ // n, k
		{1, 1}, {2, 1}, {2, 2}, {3, 1}, {3, 2}, {3, 3}, {5, 3}, {5, 5},
		{7, 4}, {10, 1}, {10, 10}, {16, 9}, {32, 17}, {100, 50},
		{MaxShares, 1}, {MaxShares, 2}, {MaxShares, 128}, {MaxShares, MaxShares},
	}
	for _, c := range cases {
		n, k := c[0], c[1]
		for _, size := range []int{1, 32, 100} {
			t.Run(fmt.Sprintf("n=%d,k=%d,size=%d", n, k, size), func(t *testing.T) {
				secret := randomSecret(t, size)
				shares, err := Split(crand.Reader, secret, n, k)
				if err != nil {
					t.Fatal(err)
				}
				if len(shares) != n {
					t.Fatalf("got %d shares, want %d", len(shares), n)
				}
				for i, s := range shares {
					if s.X != byte(i+1) {
						t.Fatalf("share %d has x = %d, want %d", i, s.X, i+1)
					}
					if len(s.Y) != size {
						t.Fatalf("share %d is %d bytes, want %d", i, len(s.Y), size)
					}
				}
				// The first k, the last k, and all n.
				for _, sub := range [][]Share{shares[:k], shares[n-k:], shares} {
					got, err := Combine(sub)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, secret) {
						t.Fatalf("Combine of %d shares: got %x, want %x", len(sub), got, secret)
					}
				}
			})
		}
	}
}

func TestSplitMaxSecret(t *testing.T) {
	secret := randomSecret(t, MaxSecret)
	shares, err := Split(crand.Reader, secret, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Combine(shares[2:])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, secret) {
		t.Fatal("wrong secret")
	}
}

// TestSharesDoNotAlias checks that the shares' Y do not share capacity, so
// that appending to one does not change another.
func TestSharesDoNotAlias(t *testing.T) {
	secret := randomSecret(t, 32)
	shares, err := Split(crand.Reader, secret, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	second := append([]byte(nil), shares[1].Y...)
	_ = append(shares[0].Y, 0xaa)
	if !bytes.Equal(shares[1].Y, second) {
		t.Fatal("appending to share 0 changed share 1")
	}
}

func TestEveryKSubset(t *testing.T) {
	for _, c := range [][2]int{{5, 3}, {6, 2}, {6, 6}, {7, 4}, {8, 1}} {
		n, k := c[0], c[1]
		secret := randomSecret(t, 32)
		shares, err := Split(crand.Reader, secret, n, k)
		if err != nil {
			t.Fatal(err)
		}
		count := 0
		subsets(n, k, func(idx []int) {
			count++
			got, err := Combine(pick(shares, idx))
			if err != nil {
				t.Fatalf("n=%d k=%d subset %v: %v", n, k, idx, err)
			}
			if !bytes.Equal(got, secret) {
				t.Fatalf("n=%d k=%d subset %v: wrong secret", n, k, idx)
			}
		})
		if count == 0 {
			t.Fatalf("n=%d k=%d: no subsets", n, k)
		}
	}
}

func TestRandomSubsetsAnyOrder(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	for _, c := range [][2]int{{20, 7}, {50, 25}, {MaxShares, 10}, {MaxShares, 200}} {
		n, k := c[0], c[1]
		secret := randomSecret(t, 32)
		shares, err := Split(crand.Reader, secret, n, k)
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			m := k + r.IntN(n-k+1) // k..n shares
			idx := r.Perm(n)[:m]
			got, err := Combine(pick(shares, idx))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, secret) {
				t.Fatalf("n=%d k=%d subset %v: wrong secret", n, k, idx)
			}
		}
	}
}

func TestFewerThanK(t *testing.T) {
	for _, c := range [][2]int{{2, 2}, {3, 2}, {5, 3}, {5, 5}, {10, 7}, {MaxShares, MaxShares}} {
		n, k := c[0], c[1]
		secret := randomSecret(t, 32)
		shares, err := Split(crand.Reader, secret, n, k)
		if err != nil {
			t.Fatal(err)
		}
		// With k-1 shares the result differs from the secret in a byte
		// unless that byte's top coefficient is 0 (1 in 256), so in all 32
		// with probability 2^-256.
		for _, sub := range [][]Share{shares[:k-1], shares[n-k+1:]} {
			got, err := Combine(sub)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(got, secret) {
				t.Fatalf("n=%d k=%d: %d shares gave the secret", n, k, len(sub))
			}
		}
	}
}

// TestFewerThanKExact checks, with known coefficients, that k-1 shares give
// the secret plus the top coefficient times the product of their x.
func TestFewerThanKExact(t *testing.T) {
	secret := []byte{0x42}
	// k = 3: coefficients of x and x^2.
	shares, err := Split(bytes.NewReader([]byte{0x11, 0x22}), secret, 4, 3)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Combine(shares[1:3]) // x = 2, 3
	if err != nil {
		t.Fatal(err)
	}
	want := 0x42 ^ mul(0x22, mul(2, 3))
	if got[0] != want {
		t.Fatalf("got %#x, want %#x", got[0], want)
	}
	// And the shares are the polynomial's values.
	for _, s := range shares {
		x := s.X
		want := 0x42 ^ mul(0x11, x) ^ mul(0x22, mul(x, x))
		if s.Y[0] != want {
			t.Fatalf("share at x = %d is %#x, want %#x", x, s.Y[0], want)
		}
	}
}

func TestK1SharesAreSecret(t *testing.T) {
	secret := randomSecret(t, 32)
	shares, err := Split(crand.Reader, secret, 4, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shares {
		if !bytes.Equal(s.Y, secret) {
			t.Fatal("with k = 1 every share is the secret")
		}
	}
}

// slowMul multiplies by the schoolbook method with branches, as a reference.
func slowMul(a, b byte) byte {
	var p byte
	for b != 0 {
		if b&1 != 0 {
			p ^= a
		}
		if a&0x80 != 0 {
			a = a<<1 ^ 0x1b
		} else {
			a <<= 1
		}
		b >>= 1
	}
	return p
}

func TestField(t *testing.T) {
	// FIPS-197 section 4.2.
	for _, v := range [][3]byte{
		{0x57, 0x83, 0xc1}, {0x57, 0x13, 0xfe}, {0x57, 0x02, 0xae},
		{0x57, 0x04, 0x47}, {0x57, 0x08, 0x8e}, {0x57, 0x10, 0x07},
		{0x53, 0xca, 0x01}, // 0x53 and 0xca are inverses
	} {
		if got := mul(v[0], v[1]); got != v[2] {
			t.Errorf("%#x · %#x = %#x, want %#x", v[0], v[1], got, v[2])
		}
	}
	for a := range 256 {
		for b := range 256 {
			x, y := byte(a), byte(b)
			if mul(x, y) != mul(y, x) {
				t.Fatalf("mul(%#x, %#x) != mul(%#x, %#x)", x, y, y, x)
			}
			if mul(x, y) != slowMul(x, y) {
				t.Fatalf("mul(%#x, %#x) = %#x, want %#x", x, y, mul(x, y), slowMul(x, y))
			}
		}
		x := byte(a)
		if mul(x, 1) != x || mul(x, 0) != 0 {
			t.Fatalf("%#x: 1 and 0 are not the identities", x)
		}
	}
	if inv(0) != 0 {
		t.Errorf("inv(0) = %#x, want 0", inv(0))
	}
	if inv(0x53) != 0xca {
		t.Errorf("inv(0x53) = %#x, want 0xca", inv(0x53))
	}
	for a := 1; a < 256; a++ {
		x := byte(a)
		if got := mul(x, inv(x)); got != 1 {
			t.Fatalf("%#x · inv(%#x) = %#x, want 1", x, x, got)
		}
	}
	r := mrand.New(mrand.NewPCG(3, 4))
	for range 10000 {
		a, b, c := byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())
		if mul(a, mul(b, c)) != mul(mul(a, b), c) {
			t.Fatalf("mul is not associative at %#x, %#x, %#x", a, b, c)
		}
		if mul(a, b^c) != mul(a, b)^mul(a, c) {
			t.Fatalf("mul does not distribute at %#x, %#x, %#x", a, b, c)
		}
	}
}

func TestSplitRefuses(t *testing.T) {
	ok := randomSecret(t, 32)
	cases := []struct {
		name   string
		secret []byte
		n, k   int
	}{
		{"k=0", ok, 3, 0},
		{"k<0", ok, 3, -1},
		{"n=0", ok, 0, 0},
		{"k>n", ok, 3, 4},
		{"n>MaxShares", ok, MaxShares + 1, 2},
		{"n,k>MaxShares", ok, MaxShares + 1, MaxShares + 1},
		{"nil secret", nil, 3, 2},
		{"empty secret", []byte{}, 3, 2},
		{"secret>MaxSecret", make([]byte, MaxSecret+1), 3, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			shares, err := Split(crand.Reader, c.secret, c.n, c.k)
			if !errors.Is(err, ErrParams) {
				t.Fatalf("err = %v, want ErrParams", err)
			}
			if shares != nil {
				t.Fatal("shares returned with an error")
			}
		})
	}
	if _, err := Split(nil, ok, 3, 2); !errors.Is(err, ErrParams) {
		t.Fatalf("nil reader: err = %v, want ErrParams", err)
	}
}

type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

// byteReader returns one byte a Read.
type byteReader struct{ r io.Reader }

func (b byteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return b.r.Read(p[:1])
}

func TestSplitShortRandom(t *testing.T) {
	secret := randomSecret(t, 32)
	need := 32 * 2 // k = 3
	for _, r := range []io.Reader{
		bytes.NewReader(nil),
		bytes.NewReader(make([]byte, need-1)),
		io.LimitReader(crand.Reader, int64(need/2)),
		failingReader{errors.New("entropy gone")},
	} {
		shares, err := Split(r, secret, 5, 3)
		if err == nil {
			t.Fatalf("%T: short read accepted", r)
		}
		if errors.Is(err, ErrParams) || errors.Is(err, ErrShares) {
			t.Fatalf("%T: err = %v, want the reader's error", r, err)
		}
		if shares != nil {
			t.Fatal("shares returned with an error")
		}
	}
	if _, err := Split(failingReader{io.ErrClosedPipe}, secret, 5, 3); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("err = %v, want it to wrap the reader's error", err)
	}

	// Exactly enough, even one byte at a time, is enough.
	shares, err := Split(byteReader{bytes.NewReader(make([]byte, need))}, secret, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Combine(shares[:3])
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Combine: %x, %v", got, err)
	}
	// k = 1 reads nothing.
	if _, err := Split(bytes.NewReader(nil), secret, 5, 1); err != nil {
		t.Fatalf("k = 1: %v", err)
	}
}

func TestCombineRefuses(t *testing.T) {
	secret := randomSecret(t, 32)
	shares, err := Split(crand.Reader, secret, 5, 3)
	if err != nil {
		t.Fatal(err)
	}
	with := func(i int, s Share) []Share {
		out := append([]Share(nil), shares...)
		out[i] = s
		return out
	}
	many := make([]Share, MaxShares+1)
	for i := range many {
		many[i] = Share{X: byte(i + 1), Y: []byte{1}} // the last X wraps to 0
	}
	cases := []struct {
		name   string
		shares []Share
		reason string
	}{
		{"nil", nil, "no shares"},
		{"empty", []Share{}, "no shares"},
		{"too many", many, "more than 255"},
		{"zero x", with(2, Share{X: 0, Y: shares[2].Y}), "x = 0"},
		{"zero x first", with(0, Share{X: 0, Y: shares[0].Y}), "x = 0"},
		{"duplicate x", with(3, Share{X: shares[1].X, Y: shares[3].Y}), "same x"},
		{"same share twice", append(append([]Share(nil), shares[:3]...), shares[0]), "same x"},
		{"empty y", with(2, Share{X: 3, Y: []byte{}}), "share 2 is 0 bytes"},
		{"nil y", with(1, Share{X: 2}), "share 1 is 0 bytes"},
		{"empty first", with(0, Share{X: 1}), "share 0 is empty"},
		{"shorter", with(4, Share{X: 5, Y: shares[4].Y[:31]}), "share 4 is 31 bytes"},
		{"longer", with(4, Share{X: 5, Y: append(append([]byte(nil), shares[4].Y...), 0)}), "share 4 is 33 bytes"},
		{"too long", []Share{{X: 1, Y: make([]byte, MaxSecret+1)}, {X: 2, Y: make([]byte, MaxSecret+1)}}, "more than 1024"},
		{"one too long", []Share{{X: 1, Y: make([]byte, 10)}, {X: 2, Y: make([]byte, MaxSecret+1)}}, "share 1 is 1025 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Combine(c.shares)
			if !errors.Is(err, ErrShares) {
				t.Fatalf("err = %v, want ErrShares", err)
			}
			if !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("err = %q, want it to say %q", err, c.reason)
			}
			if got != nil {
				t.Fatal("secret returned with an error")
			}
		})
	}
	// MaxShares shares and MaxSecret bytes are accepted.
	all, err := Split(crand.Reader, secret, MaxShares, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Combine(all); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Combine of %d shares: %v", MaxShares, err)
	}
	if _, err := Combine([]Share{{X: 7, Y: make([]byte, MaxSecret)}}); err != nil {
		t.Fatalf("MaxSecret bytes: %v", err)
	}
}

// sharesFrom turns arbitrary bytes into shares: data[0] is the number of
// shares, data[1:3] a length (which may exceed MaxSecret), then each share is
// an x byte and up to that many y bytes, fewer if data runs out.
func sharesFrom(data []byte) []Share {
	if len(data) < 3 {
		return nil
	}
	count := int(data[0])
	if count == 0xff {
		count = MaxShares + 1 // reach the too-many refusal
	}
	size := (int(data[1])<<8 | int(data[2])) % (MaxSecret + 64)
	data = data[3:]
	shares := make([]Share, 0, count)
	for range count {
		var s Share
		if len(data) > 0 {
			s.X, data = data[0], data[1:]
		}
		m := min(size, len(data))
		s.Y, data = data[:m], data[m:]
		shares = append(shares, s)
	}
	return shares
}

func FuzzCombine(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{1, 0, 1, 1, 0x42})
	f.Add([]byte{2, 0, 1, 1, 0x42, 1, 0x43})
	f.Add([]byte{2, 0, 1, 0, 0x42, 2, 0x43})
	f.Add([]byte{2, 0, 2, 1, 0x42, 0x43, 2, 0x43})
	f.Add([]byte{0xff, 0, 1, 1, 2, 3, 4})
	f.Add(append([]byte{1, 0x04, 0x01, 1}, make([]byte, MaxSecret+1)...))
	secret := []byte("correct horse battery staple ...")
	shares, err := Split(crand.Reader, secret, 5, 3)
	if err != nil {
		f.Fatal(err)
	}
	seed := []byte{3, 0, byte(len(secret))}
	for _, s := range shares[:3] {
		seed = append(append(seed, s.X), s.Y...)
	}
	f.Add(seed)

	f.Fuzz(func(t *testing.T, data []byte) {
		shares := sharesFrom(data)
		got, err := Combine(shares)
		if err != nil {
			if !errors.Is(err, ErrShares) {
				t.Fatalf("err = %v, want ErrShares", err)
			}
			if got != nil {
				t.Fatal("secret returned with an error")
			}
			return
		}
		if len(got) != len(shares[0].Y) {
			t.Fatalf("secret is %d bytes, shares %d", len(got), len(shares[0].Y))
		}
		// Combine is a function of its input: the same shares in another
		// order give the same secret.
		rev := make([]Share, len(shares))
		for i, s := range shares {
			rev[len(shares)-1-i] = s
		}
		again, err := Combine(rev)
		if err != nil || !bytes.Equal(again, got) {
			t.Fatalf("reversed shares: %x, %v; want %x", again, err, got)
		}
	})
}

func FuzzSplitCombine(f *testing.F) {
	f.Add([]byte("a 32-byte key for recovery hold."), uint8(5), uint8(3), uint64(1))
	f.Add([]byte{0}, uint8(1), uint8(1), uint64(2))
	f.Add([]byte{0xff, 0}, uint8(255), uint8(255), uint64(3))
	f.Add([]byte{1, 2, 3}, uint8(255), uint8(1), uint64(4))
	f.Add(make([]byte, 64), uint8(10), uint8(10), uint64(5))

	f.Fuzz(func(t *testing.T, secret []byte, n8, k8 uint8, seed uint64) {
		if len(secret) == 0 || len(secret) > 256 {
			// Keep the iterations quick; sizes are tested in TestRoundTrip.
			return
		}
		n := int(n8)%MaxShares + 1 // 1..255
		k := int(k8)%n + 1         // 1..n
		var key [32]byte
		key[0], key[1], key[2], key[3] = byte(seed), byte(seed>>8), byte(seed>>16), byte(seed>>24)
		key[4], key[5], key[6], key[7] = byte(seed>>32), byte(seed>>40), byte(seed>>48), byte(seed>>56)
		rnd := mrand.NewChaCha8(key)
		shares, err := Split(rnd, secret, n, k)
		if err != nil {
			t.Fatalf("Split(n=%d, k=%d, %d bytes): %v", n, k, len(secret), err)
		}
		if len(shares) != n {
			t.Fatalf("got %d shares, want %d", len(shares), n)
		}
		perm := mrand.New(mrand.NewPCG(seed, uint64(n)<<8|uint64(k)))
		idx := perm.Perm(n)[:k+perm.IntN(n-k+1)]
		got, err := Combine(pick(shares, idx))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, secret) {
			t.Fatalf("n=%d k=%d subset %v: got %x, want %x", n, k, idx, got, secret)
		}
	})
}

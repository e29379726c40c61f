// Package shamir splits a secret (such as a 32-byte key) into shares held by
// recovery-key holders, any k of n of which recover it, by Shamir secret
// sharing over GF(2^8), the AES field (x^8+x^4+x^3+x+1), one polynomial a
// byte of the secret.
//
// Share i (0-based) of a Split is the value at x = i+1 of polynomials whose
// constant terms are the secret's bytes and whose other k-1 coefficients are
// drawn from the caller's source of randomness. Combine interpolates the
// shares it is given at 0 (Lagrange).
//
// Guarantees: Split either returns n shares, any k of which Combine turns
// back into the secret, or an error (ErrParams for parameters out of bounds,
// the reader's error for a short read); with the coefficients drawn
// uniformly, fewer than k shares reveal nothing of the secret; the
// coefficients are cleared once the shares are written. Combine refuses
// (ErrShares) shares that cannot come from one Split — none, more than
// MaxShares, a zero or repeated x, empty, unequal or longer than MaxSecret —
// and never panics on any input; it cannot tell whether it was given k
// shares, so given fewer it returns a wrong secret, which callers must check
// (against a key id, say). The field arithmetic is a bitwise loop without
// tables or branches on the data, so that no memory access or branch depends
// on the secret.
package shamir

import (
	"errors"
	"fmt"
	"io"
)

// Share is one share of a secret: its x coordinate (1..255) and one y byte per secret byte.
type Share struct {
	X byte
	Y []byte
}

// Errors callers branch on.
var (
	ErrParams = errors.New("shamir: invalid parameters") // k, n, sizes out of bounds
	ErrShares = errors.New("shamir: invalid shares")     // duplicate or zero X, unequal lengths, too few
)

// MaxShares is the largest n: 255.
const MaxShares = 255

// MaxSecret bounds the secret size: 1024 bytes.
const MaxSecret = 1024

// Split splits secret into n shares, any k of which recover it; fewer reveal nothing.
// 1 <= k <= n <= MaxShares, 1 <= len(secret) <= MaxSecret. Share i (0-based) has X = i+1.
// Randomness (the polynomial coefficients) is drawn from rand (io.Reader; callers pass crypto/rand.Reader); a short read is an error.
func Split(rand io.Reader, secret []byte, n, k int) ([]Share, error) {
	if k < 1 || n < k || n > MaxShares {
		return nil, fmt.Errorf("%w: k = %d, n = %d; need 1 <= k <= n <= %d", ErrParams, k, n, MaxShares)
	}
	if len(secret) < 1 || len(secret) > MaxSecret {
		return nil, fmt.Errorf("%w: secret is %d bytes; need 1 to %d", ErrParams, len(secret), MaxSecret)
	}
	if rand == nil {
		return nil, fmt.Errorf("%w: no source of randomness", ErrParams)
	}

	// coef holds, for each byte j of the secret, the coefficients of x^1 ..
	// x^(k-1) of its polynomial, at coef[j*d : (j+1)*d].
	d := k - 1
	coef := make([]byte, len(secret)*d)
	defer clear(coef)
	if _, err := io.ReadFull(rand, coef); err != nil {
		return nil, fmt.Errorf("shamir: reading randomness: %w", err)
	}

	size := len(secret)
	ys := make([]byte, n*size)
	shares := make([]Share, n)
	for i := range shares {
		x := byte(i + 1)
		y := ys[i*size : (i+1)*size : (i+1)*size]
		for j, s := range secret {
			c := coef[j*d : (j+1)*d]
			// Horner: ((c[d-1]·x + c[d-2])·x + ... + c[0])·x + s.
			var v byte
			for t := d - 1; t >= 0; t-- {
				v = mul(v, x) ^ c[t]
			}
			y[j] = mul(v, x) ^ s
		}
		shares[i] = Share{X: x, Y: y}
	}
	return shares, nil
}

// Combine recovers the secret from at least k shares of one Split (it uses all it is given, by Lagrange interpolation at 0).
// It refuses (ErrShares, wrapped with a reason) zero or duplicate X, shares of unequal or zero length or longer than MaxSecret, more than MaxShares shares, or none.
// It cannot tell whether it was given at least k shares: given fewer it returns a wrong secret; callers check the result (e.g. against a key id).
func Combine(shares []Share) ([]byte, error) {
	if len(shares) == 0 {
		return nil, fmt.Errorf("%w: no shares", ErrShares)
	}
	if len(shares) > MaxShares {
		return nil, fmt.Errorf("%w: %d shares, more than %d", ErrShares, len(shares), MaxShares)
	}
	size := len(shares[0].Y)
	if size == 0 {
		return nil, fmt.Errorf("%w: share 0 is empty", ErrShares)
	}
	if size > MaxSecret {
		return nil, fmt.Errorf("%w: share 0 is %d bytes, more than %d", ErrShares, size, MaxSecret)
	}
	var seen [256]int // 1 + the index of the share with that x, or 0
	for i, s := range shares {
		if s.X == 0 {
			return nil, fmt.Errorf("%w: share %d has x = 0", ErrShares, i)
		}
		if j := seen[s.X]; j != 0 {
			return nil, fmt.Errorf("%w: shares %d and %d have the same x = %d", ErrShares, j-1, i, s.X)
		}
		seen[s.X] = i + 1
		if len(s.Y) != size {
			return nil, fmt.Errorf("%w: share %d is %d bytes, share 0 is %d", ErrShares, i, len(s.Y), size)
		}
	}

	secret := make([]byte, size)
	for i, s := range shares {
		// The Lagrange basis polynomial of share i at 0:
		// l = prod over j != i of x_j / (x_j - x_i); subtraction is xor.
		// It depends on the x coordinates only, which are public.
		num, den := byte(1), byte(1)
		for j, o := range shares {
			if j == i {
				continue
			}
			num = mul(num, o.X)
			den = mul(den, o.X^s.X)
		}
		l := mul(num, inv(den))
		for b, y := range s.Y {
			secret[b] ^= mul(l, y)
		}
	}
	return secret, nil
}

// mul multiplies a and b in GF(2^8) modulo x^8+x^4+x^3+x+1, in eight
// rounds without branches or tables.
func mul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= a & -(b & 1)     // add a if the low bit of b is set
		carry := -(a >> 7)    // 0xff if a overflows when doubled
		a = a<<1 ^ 0x1b&carry // a·x, reduced
		b >>= 1
	}
	return p
}

// inv returns the multiplicative inverse of a in GF(2^8), as a^254 (a^255 = 1
// for a != 0), and 0 for 0.
func inv(a byte) byte {
	// a^254 = a^2 · a^4 · ... · a^128.
	r := byte(1)
	for range 7 {
		a = mul(a, a)
		r = mul(r, a)
	}
	return r
}

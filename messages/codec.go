package messages

import (
	"errors"
	"fmt"

	"github.com/cohort-dev/cohort/codec"
)

// Version is the protocol version every message carries. See the package
// documentation for the history of bumps.
const Version uint16 = 7

// Errors that decoding returns, wrapped with detail. Callers branch on them
// with errors.Is. ErrTooLarge and ErrMalformed are package codec's.
var (
	ErrTooLarge  = codec.ErrTooLarge
	ErrMalformed = codec.ErrMalformed
	ErrVersion   = errors.New("unsupported protocol version")
	ErrField     = errors.New("invalid field")
)

// Validator is implemented by every wire type: it checks the version and
// bounds every variable-length field.
type Validator interface {
	Validate() error
}

// Marshal encodes v as msgpack (codec.Marshal).
func Marshal(v any) ([]byte, error) { return codec.Marshal(v) }

// Decode strictly decodes data, at most limit bytes, into v and validates it.
// The version is checked first, so that a peer speaking another version hears
// so rather than that its message is malformed. On error v may be partly
// written and must not be used.
func Decode(data []byte, limit int, v Validator) error {
	if len(data) <= limit {
		if ver, ok := codec.PeekVersion(data); ok && ver != uint64(Version) {
			return fmt.Errorf("%w: %d (this build speaks %d)", ErrVersion, ver, Version)
		}
	}
	if err := Unmarshal(data, limit, v); err != nil {
		return err
	}
	return v.Validate()
}

// Unmarshal is Decode without the validation step, for types that are not
// wire messages (sealed state, evidence) but want the same strict parsing
// (codec.Unmarshal).
func Unmarshal(data []byte, limit int, v any) error { return codec.Unmarshal(data, limit, v) }

package service

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
)

// RequestInfoHeader is the header in which the NATS server stamps a request
// that crossed a service import with its sender (nats-server's
// ClientInfoHdr). Where the import shares its requesters (share: true, as
// package access writes the imports whose exporter must know who asks), the
// stamp names the sender's account, its user (the key it connected with)
// and its kind, and the server writes it over any stamp the sender wrote.
const RequestInfoHeader = "Nats-Request-Info"

// MaxRequestInfo bounds the stamp a service decodes: the server's is a few
// hundred bytes.
const MaxRequestInfo = 8 << 10

// Sender is what a service reads of the NATS server's stamp on a request
// (nats-server's ClientInfo).
type Sender struct {
	Account string `json:"acc"`
	User    string `json:"user"`
	// Kind is the kind of the connection that published the request:
	// "Client" for a client's own publish; the server's internal clients
	// ("JetStream", "Account", "System") for what the server published on
	// the account's behalf; "Leafnode" for what came through a leaf node.
	// Empty where the import does not share its requesters: the stamp then
	// names the account only.
	Kind string `json:"kind"`
}

// Client reports whether the stamp names a client's own publish.
func (s Sender) Client() bool { return s.Kind == "Client" }

// ErrStamp: a request carries a stamp that does not decode.
var ErrStamp = errors.New("the NATS server's stamp of the sender (" + RequestInfoHeader + ") does not decode")

// SenderOf reads the NATS server's stamp of who sent a request. stamped is
// false when the request carries none: it reached the service without
// crossing an import, from within the service's own account, or in a
// deployment without accounts (where a sender may write any header, and
// so the stamp too). A stamp that is too large or does not decode is
// ErrStamp.
func SenderOf(h nats.Header) (s Sender, stamped bool, err error) {
	raw := h.Get(RequestInfoHeader)
	if raw == "" {
		return Sender{}, false, nil
	}
	if len(raw) > MaxRequestInfo {
		return Sender{}, true, fmt.Errorf("%w: %d bytes, more than %d", ErrStamp, len(raw), MaxRequestInfo)
	}
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return Sender{}, true, ErrStamp
	}
	return s, true, nil
}

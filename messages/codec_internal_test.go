package messages

import "github.com/cohort-dev/cohort/codec"

// The codec's bounds and pre-scan, as the tests of the wire types use them.
const (
	maxDepth = codec.MaxDepth
	maxItems = codec.MaxItems
)

// scan is codec.Scan, in the form the tests call it: from the start, at the
// top level.
func scan(b []byte, pos, depth int) (int, error) {
	if pos != 0 || depth != 0 {
		panic("scan: the tests scan from the top")
	}
	return codec.Scan(b)
}

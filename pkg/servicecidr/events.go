package servicecidr

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// EventType is a watch event's "type".
type EventType string

const (
	Added    EventType = "ADDED"
	Modified EventType = "MODIFIED"
	Deleted  EventType = "DELETED"
	// Bookmark carries only a newer resourceVersion to resume from.
	Bookmark EventType = "BOOKMARK"
	// Error carries a Status: the watch is over (410: relist).
	Error EventType = "ERROR"
)

// Event is one event of a watch stream.
type Event struct {
	Type EventType
	// Object is the ServiceCIDR added, modified or deleted; of a
	// Bookmark, only its resourceVersion is set, if that.
	Object ServiceCIDR
	// Status is an Error's.
	Status *StatusError
}

// maxEventBytes bounds what one event may take in memory: a ServiceCIDR
// is a few hundred bytes, and a stream that never completes a value must
// not fill the container's memory limit.
const maxEventBytes = 1 << 20

var errEventTooLarge = fmt.Errorf("watch event larger than %d bytes", maxEventBytes)

// EventReader decodes a watch stream: JSON objects one after another
// ({"type":"ADDED","object":{...}}), as the API server sends them.
type EventReader struct {
	in  *boundedReader
	dec *json.Decoder
}

// NewEventReader reads the events of r.
func NewEventReader(r io.Reader) *EventReader {
	in := &boundedReader{r: r}
	return &EventReader{in: in, dec: json.NewDecoder(in)}
}

// Next returns the next event; io.EOF when the stream ended between two
// events (the server ended the watch), any other error when it ended
// within one or sent what is not a ServiceCIDR watch event.
func (er *EventReader) Next() (Event, error) {
	er.in.left = maxEventBytes
	var wire struct {
		Type   EventType       `json:"type"`
		Object json.RawMessage `json:"object"`
	}
	if err := er.dec.Decode(&wire); err != nil {
		if errors.Is(err, io.EOF) {
			return Event{}, io.EOF
		}
		return Event{}, fmt.Errorf("watch event: %w", err)
	}
	ev := Event{Type: wire.Type}
	if len(wire.Object) == 0 {
		return Event{}, fmt.Errorf("watch event %q: no object", wire.Type)
	}
	switch wire.Type {
	case Added, Modified, Deleted:
		if err := json.Unmarshal(wire.Object, &ev.Object); err != nil {
			return Event{}, fmt.Errorf("watch event %s: object: %w", wire.Type, err)
		}
		if ev.Object.Metadata.Name == "" {
			return Event{}, fmt.Errorf("watch event %s: object has no metadata.name", wire.Type)
		}
	case Bookmark:
		// One without a resourceVersion is the watcher's to ignore: it
		// must not end a watch that works.
		if err := json.Unmarshal(wire.Object, &ev.Object); err != nil {
			return Event{}, fmt.Errorf("watch event %s: object: %w", wire.Type, err)
		}
	case Error:
		ev.Status = &StatusError{}
		if err := json.Unmarshal(wire.Object, ev.Status); err != nil {
			return Event{}, fmt.Errorf("watch event %s: object: %w", wire.Type, err)
		}
	default:
		return Event{}, fmt.Errorf("watch event type %q: want ADDED, MODIFIED, DELETED, BOOKMARK or ERROR", wire.Type)
	}
	return ev, nil
}

// boundedReader fails once left bytes have been read: Next sets left
// anew for each event (what the decoder read ahead counts towards the
// next, so the bound holds with its buffer).
type boundedReader struct {
	r    io.Reader
	left int64
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errEventTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

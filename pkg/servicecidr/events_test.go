package servicecidr

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestEventReader(t *testing.T) {
	kubernetes := serviceCIDR("kubernetes", "10.96.0.0/12", "fd00:10:96::/112")
	kubernetes.Metadata.ResourceVersion = "7"
	var bookmark ServiceCIDR
	bookmark.Metadata.ResourceVersion = "9"
	tests := []struct {
		name    string
		stream  string
		want    []Event
		wantErr string // of the call after the last event; "" is io.EOF
	}{
		{name: "empty: the server ended the watch at once", stream: ""},
		{name: "each type, newline-separated as the API server sends them, unknown fields ignored",
			stream: `{"type":"ADDED","object":{"kind":"ServiceCIDR","apiVersion":"networking.k8s.io/v1","metadata":{"name":"kubernetes","resourceVersion":"7","uid":"u"},"spec":{"cidrs":["10.96.0.0/12","fd00:10:96::/112"]},"status":{"conditions":[]}}}
{"type":"MODIFIED","object":{"metadata":{"name":"kubernetes","resourceVersion":"7","deletionTimestamp":"2025-01-01T00:00:00Z"},"spec":{"cidrs":["10.96.0.0/12","fd00:10:96::/112"]}}}
{"type":"BOOKMARK","object":{"kind":"ServiceCIDR","metadata":{"resourceVersion":"9"}}}
{"type":"DELETED","object":{"metadata":{"name":"kubernetes","resourceVersion":"7"},"spec":{"cidrs":["10.96.0.0/12","fd00:10:96::/112"]}}}
{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}}
`,
			want: []Event{{Type: Added, Object: kubernetes}, {Type: Modified, Object: kubernetes}, {Type: Bookmark, Object: bookmark},
				{Type: Deleted, Object: kubernetes}, {Type: Error, Status: &StatusError{Code: 410, Reason: "Expired", Message: "too old resource version: 1 (5)"}}}},
		{name: "no separator between events", stream: `{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}`,
			want: []Event{{Type: Bookmark, Object: bookmark}, {Type: Bookmark, Object: bookmark}}},
		{name: "cut within an event: a dropped stream", stream: `{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}` + "\n" + `{"type":"ADDED","obj`,
			want: []Event{{Type: Bookmark, Object: bookmark}}, wantErr: "watch event: unexpected EOF"},
		{name: "unknown type", stream: `{"type":"SYNC","object":{}}`, wantErr: `watch event type "SYNC": want ADDED, MODIFIED, DELETED, BOOKMARK or ERROR`},
		{name: "no object", stream: `{"type":"ADDED"}`, wantErr: `watch event "ADDED": no object`},
		{name: "an object without a name", stream: `{"type":"DELETED","object":{"metadata":{}}}`, wantErr: "watch event DELETED: object has no metadata.name"},
		{name: "a null object", stream: `{"type":"ADDED","object":null}`, wantErr: "watch event ADDED: object has no metadata.name"},
		{name: "a bookmark without a resourceVersion: the watcher's to ignore", stream: `{"type":"BOOKMARK","object":{"metadata":{}}}`,
			want: []Event{{Type: Bookmark}}},
		{name: "cidrs not a list", stream: `{"type":"ADDED","object":{"metadata":{"name":"a"},"spec":{"cidrs":"10.96.0.0/12"}}}`, wantErr: "watch event ADDED: object: json: cannot unmarshal string"},
		{name: "not JSON", stream: `<html>`, wantErr: "watch event: invalid character '<'"},
		{name: "an event beyond the bound", stream: `{"type":"ADDED","object":{"metadata":{"name":"` + strings.Repeat("a", maxEventBytes) + `"}}}`,
			wantErr: "watch event larger than 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events := NewEventReader(strings.NewReader(tt.stream))
			var got []Event
			var err error
			for {
				var ev Event
				if ev, err = events.Next(); err != nil {
					break
				}
				got = append(got, ev)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("events %+v, want %+v", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && !errors.Is(err, io.EOF):
				t.Errorf("ended with %v, want io.EOF", err)
			case tt.wantErr != "" && (errors.Is(err, io.EOF) || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("ended with %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// FuzzEventReader: a stream gives events that say what the watcher
// needs, and ends in an error (io.EOF or another), never a panic.
func FuzzEventReader(f *testing.F) {
	for _, seed := range []string{"",
		`{"type":"ADDED","object":{"metadata":{"name":"kubernetes","resourceVersion":"7"},"spec":{"cidrs":["10.96.0.0/12"]}}}` + "\n",
		`{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}{"type":"ERROR","object":{"code":410}}`,
		`{"type":"DELETED","object":{"metadata":{"name":"a"}}} {"type":"x"}`, `[]`, `{"type":null,"object":1}`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		events := NewEventReader(strings.NewReader(string(stream)))
		for range len(stream) + 1 {
			ev, err := events.Next()
			if err != nil {
				return
			}
			switch ev.Type {
			case Added, Modified, Deleted:
				if ev.Object.Metadata.Name == "" {
					t.Fatalf("%s event without a name from %q", ev.Type, stream)
				}
			case Bookmark: // with a resourceVersion or without, which the watcher ignores
			case Error:
				if ev.Status == nil {
					t.Fatalf("ERROR event without a status from %q", stream)
				}
			default:
				t.Fatalf("event of type %q from %q", ev.Type, stream)
			}
		}
		t.Fatalf("more events than bytes in %q", stream)
	})
}

package servicecidr

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// StatusError is the API server's word on a request it refused, or the
// object of a watch's ERROR event: the fields of a metav1.Status that say
// what went wrong (410 Expired: the resourceVersion is too old to watch).
type StatusError struct {
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func (e *StatusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d", e.Code)
	if e.Reason != "" {
		b.WriteString(" " + e.Reason)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	return b.String()
}

// statusOf is the error of an HTTP answer with code and body: the Status
// the API server sends, or, from anything else in the way (a proxy), the
// start of the body as it came.
func statusOf(code int, body []byte) *StatusError {
	var s StatusError
	if json.Unmarshal(body, &s) != nil || (s.Message == "" && s.Reason == "") {
		const max = 200
		text := strings.TrimSpace(string(body))
		if len(text) > max {
			text = text[:max] + "..."
		}
		s = StatusError{Reason: http.StatusText(code), Message: text}
	}
	s.Code = code
	return &s
}

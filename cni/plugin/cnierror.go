package plugin

import (
	"encoding/json"
	"io"
)

// The CNI spec's well-known error codes that weir's plugins answer with.
const (
	ErrIncompatibleCNIVersion      uint = 1
	ErrUnknownContainer            uint = 3
	ErrInvalidEnvironmentVariables uint = 4
	ErrIOFailure                   uint = 5
	ErrDecodingFailure             uint = 6
	ErrInvalidNetworkConfig        uint = 7
	ErrInvalidNetNS                uint = 8
	ErrTryAgainLater               uint = 11
	ErrInternal                    uint = 999
)

// Error is a CNI error result: what a plugin prints on stdout, with a
// non-zero exit, when a verb fails. Its JSON is the spec's (and
// containernetworking/cni's types.Error's, byte for byte: the runtime and
// the tests read it).
//
// Why weir's own type: weir-cni links none of the CNI library (its
// package initialisation and the work of its dispatcher cost every ADD;
// see skel.go), and both plugins must answer alike.
type Error struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

// newError is a CNI error of code.
func newError(code uint, msg, details string) *Error {
	return &Error{Code: code, Msg: msg, Details: details}
}

// Error says the message and, after a semicolon, the details.
func (e *Error) Error() string {
	if e.Details != "" {
		return e.Msg + "; " + e.Details
	}
	return e.Msg
}

// printTo writes the error as the runtime reads it (indented as the CNI
// library does).
func (e *Error) printTo(w io.Writer) error {
	b, err := json.MarshalIndent(e, "", "    ")
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

package plugin

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
)

// prevResult is the primary plugin's result, which weir-cni passes on:
// the pod's addresses, which is all it reads of it, and what to print.
//
// When the result is in the config's own version (what a runtime passes: it
// decodes the previous plugin's answer in that version) it is kept as the
// runtime's bytes and printed back as they are, and only the addresses are
// decoded. Decoding the whole result into the library's types and encoding
// it again, as before, cost every ADD about 0.15 ms of CPU in a process
// that starts cold (measured: a static binary doing only that, 400 runs
// interleaved: 1.40 ms CPU against 1.24, p50). A result in another version,
// or one that does not say its version, goes through ConvertPrevResult,
// which the rules helper sets (package cni/convert, the CNI library's
// conversion); weir-cni, which does not link that library, hands such an
// ADD to the helper.
type prevResult struct {
	raw     []byte                // printed as is when printer is nil
	printer func(io.Writer) error // the converted result's, for another version
	ips     []string              // the pod's addresses, CIDR form
	// unconverted is set, and the rest empty, for a result in another
	// version when this process cannot convert it.
	unconverted bool
}

// ConvertPrevResult reads a prevResult in another version than the
// config's (confVersion): the pod's addresses, in CIDR form, and how to
// print the result in confVersion. Nil (weir-cni) means this process
// cannot: the ADD is handed to the rules helper, which sets it.
var ConvertPrevResult func(confVersion string, raw []byte) ([]string, func(io.Writer) error, error)

// rawVersions are the result versions passed on as bytes: those of the
// library's current result type, the ones weir-cni's config may name.
var rawVersions = []string{"1.0.0", "1.1.0"}

// parsePrevResult reads raw, the conflist's prevResult, for a config of
// confVersion.
func parsePrevResult(confVersion string, raw []byte) (*prevResult, error) {
	var head struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, err
	}
	if head.CNIVersion == confVersion && slices.Contains(rawVersions, confVersion) {
		p := &prevResult{raw: raw}
		for i, ip := range head.IPs {
			pfx, err := netip.ParsePrefix(ip.Address)
			if err != nil {
				return nil, fmt.Errorf("ips[%d].address %q: want an address in CIDR form: %w", i, ip.Address, err)
			}
			p.ips = append(p.ips, pfx.String())
		}
		return p, nil
	}
	if ConvertPrevResult == nil {
		return &prevResult{unconverted: true}, nil
	}
	ips, printer, err := ConvertPrevResult(confVersion, raw)
	if err != nil {
		return nil, err
	}
	return &prevResult{printer: printer, ips: ips}, nil
}

// print writes the result to stdout for the runtime, in confVersion.
func (p *prevResult) print(confVersion string) error {
	return p.printTo(os.Stdout, confVersion)
}

func (p *prevResult) printTo(w io.Writer, confVersion string) error {
	switch {
	case p.unconverted:
		return fmt.Errorf("prevResult is in another version than the config's %s, and this plugin cannot convert it", confVersion)
	case p.printer != nil:
		return p.printer(w)
	}
	_, err := w.Write(p.raw)
	return err
}

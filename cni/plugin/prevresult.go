package plugin

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
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
// or one that does not say its version, goes through the library's
// conversion as before.
type prevResult struct {
	raw   []byte       // printed as is when typed is nil
	typed types.Result // the library's conversion, for another version
	ips   []string     // the pod's addresses, CIDR form
}

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
	pc := types.PluginConf{CNIVersion: confVersion}
	if err := json.Unmarshal(raw, &pc.RawPrevResult); err != nil {
		return nil, err
	}
	if err := version.ParsePrevResult(&pc); err != nil {
		return nil, err
	}
	r, err := current.NewResultFromResult(pc.PrevResult)
	if err != nil {
		return nil, err
	}
	p := &prevResult{typed: pc.PrevResult}
	for i, ip := range r.IPs {
		if ip.Address.IP == nil {
			return nil, fmt.Errorf("ips[%d]: no address", i)
		}
		p.ips = append(p.ips, ip.Address.String())
	}
	return p, nil
}

// print writes the result to stdout for the runtime, in confVersion.
func (p *prevResult) print(confVersion string) error {
	return p.printTo(os.Stdout, confVersion)
}

func (p *prevResult) printTo(w io.Writer, confVersion string) error {
	if p.typed != nil {
		r, err := p.typed.GetAsVersion(confVersion)
		if err != nil {
			return err
		}
		return r.PrintTo(w)
	}
	_, err := w.Write(p.raw)
	return err
}

// Package convert reads a primary plugin's result in another CNI version
// than the config's, with the CNI library's result types, for weir's rules
// helper. weir-cni does not link it: a runtime passes the result in the
// config's own version, which weir-cni passes on as bytes, and hands the
// rare other case to the helper (cni/plugin, prevresult.go).
package convert

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// PrevResult decodes raw, a prevResult, converts it to confVersion, and
// returns the pod's addresses (CIDR form) and how to print the result in
// confVersion.
func PrevResult(confVersion string, raw []byte) ([]string, func(io.Writer) error, error) {
	pc := types.PluginConf{CNIVersion: confVersion}
	if err := json.Unmarshal(raw, &pc.RawPrevResult); err != nil {
		return nil, nil, err
	}
	if err := version.ParsePrevResult(&pc); err != nil {
		return nil, nil, err
	}
	r, err := current.NewResultFromResult(pc.PrevResult)
	if err != nil {
		return nil, nil, err
	}
	var ips []string
	for i, ip := range r.IPs {
		if ip.Address.IP == nil {
			return nil, nil, fmt.Errorf("ips[%d]: no address", i)
		}
		ips = append(ips, ip.Address.String())
	}
	typed := pc.PrevResult
	print := func(w io.Writer) error {
		r, err := typed.GetAsVersion(confVersion)
		if err != nil {
			return err
		}
		return r.PrintTo(w)
	}
	return ips, print, nil
}

package plugin

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/cni/convert"
)

func TestPrevResult(t *testing.T) {
	// The runtime's usual case: the config's version. The bytes go back
	// unchanged, keys the library does not know included.
	raw := `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/p"}],"ips":[{"interface":0,"address":"10.22.0.9/16","gateway":"10.22.0.1"},{"address":"fd00::9/64"}],"x-extra":1}`
	p, err := parsePrevResult("1.0.0", []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(p.ips, ",") != "10.22.0.9/16,fd00::9/64" {
		t.Fatalf("ips %v", p.ips)
	}
	var out bytes.Buffer
	if err := p.printTo(&out, "1.0.0"); err != nil || out.String() != raw {
		t.Fatalf("printed %q (%v), want the bytes as passed", out.String(), err)
	}

	// No version in the result: weir-cni cannot convert it and says so
	// (its ADD goes to the rules helper)...
	if p, err := parsePrevResult("1.1.0", []byte(`{"ips":[{"address":"10.22.0.7/16"}]}`)); err != nil || !p.unconverted {
		t.Fatalf("weir-cni parsed a result in another version: %+v, %v", p, err)
	}
	// ...and the helper, with the CNI library's conversion, converts it to
	// the config's version, as before.
	ConvertPrevResult = convert.PrevResult
	defer func() { ConvertPrevResult = nil }()
	p, err = parsePrevResult("1.1.0", []byte(`{"ips":[{"address":"10.22.0.7/16"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.printer == nil || strings.Join(p.ips, ",") != "10.22.0.7/16" {
		t.Fatalf("converted result: %+v", p)
	}
	out.Reset()
	if err := p.printTo(&out, "1.1.0"); err != nil {
		t.Fatal(err)
	}
	var got struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.CNIVersion != "1.1.0" || len(got.IPs) != 1 || got.IPs[0].Address != "10.22.0.7/16" {
		t.Fatalf("printed %s (%v)", out.String(), err)
	}

	// Bad input is refused, naming what is wrong.
	for _, c := range []struct{ name, raw, want string }{
		{"bad address", `{"cniVersion":"1.0.0","ips":[{"address":"10.22.0.300/16"}]}`, "ips[0].address"},
		{"no prefix", `{"cniVersion":"1.0.0","ips":[{"address":"10.22.0.3"}]}`, "CIDR"},
		{"not an object", `[1]`, "cannot unmarshal"},
		{"bad address, other version", `{"cniVersion":"0.4.0","ips":[{"version":"4","address":"bogus"}]}`, "bogus"},
	} {
		if _, err := parsePrevResult("1.0.0", []byte(c.raw)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want one mentioning %q", c.name, err, c.want)
		}
	}
}

// FuzzPrevResult: any bytes either fail to parse or give addresses that
// are valid prefixes, and print without error; nothing panics.
func FuzzPrevResult(f *testing.F) {
	f.Add(`{"cniVersion":"1.0.0","ips":[{"address":"10.22.0.9/16"}]}`)
	f.Add(`{"ips":[{"address":"fd00::1/64"}],"interfaces":[{"name":"eth0"}]}`)
	f.Add(`{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.2.3/8"}]}`)
	ConvertPrevResult = convert.PrevResult
	defer func() { ConvertPrevResult = nil }()
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := parsePrevResult("1.0.0", []byte(raw))
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := p.printTo(&out, "1.0.0"); err != nil {
			t.Fatalf("parsed %q but cannot print it: %v", raw, err)
		}
		for _, ip := range p.ips {
			if _, err := parsePrevResult("1.0.0", []byte(`{"cniVersion":"1.0.0","ips":[{"address":"`+ip+`"}]}`)); err != nil {
				t.Fatalf("address %q from %q does not parse again: %v", ip, raw, err)
			}
		}
	})
}

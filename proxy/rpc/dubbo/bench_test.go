package dubbo

import (
	"testing"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// benchRequest is a request as dubbo-go's consumer sends one: a string
// argument and the attachments dubbo-go adds to every call.
func benchRequest() []byte {
	return request(1, reqFlags, "org.apache.dubbo.sample.UserProvider", "", "SayHello", "Ljava/lang/String;",
		appendString(nil, "bench"),
		"interface", "org.apache.dubbo.sample.UserProvider", "path", "org.apache.dubbo.sample.UserProvider",
		"group", "", "version", "", "generic", "false", "async", "false", "environment", "dev")
}

// BenchmarkDecode is what the agent does to every Dubbo request on the
// hot path: frame it, and read its method for the request metrics; and,
// for routes that match on them, its group and version too.
func BenchmarkDecode(b *testing.B) {
	req := benchRequest()
	for _, tc := range []struct {
		name    string
		attrs   []string
		recycle bool // as the framework does once the call is answered
	}{
		{"method", []string{AttrMethod}, false},
		{"method-recycled", []string{AttrMethod}, true},
		{"routed", []string{AttrService, AttrGroup, AttrVersion, AttrMethod}, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				f, _, err := Codec{}.Decode(req, rpc.Client, 1<<20)
				if err != nil {
					b.Fatal(err)
				}
				for _, a := range tc.attrs {
					f.Attr(a)
				}
				if tc.recycle {
					Codec{}.Recycle(f)
				}
			}
		})
	}
}

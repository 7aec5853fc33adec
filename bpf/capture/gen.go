package capture

// The generated files (capture_bpfel.go/.o, capture_bpfeb.go/.o) are
// committed so that a build needs no clang; hack/bpf-generate.sh runs this
// line with Debian's pinned clang and --check fails CI when they differ.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -type endpoint -type pod_config -type in_config -type sock_key -type lb_key -type lb_service -type lb_backend_key capture capture.c

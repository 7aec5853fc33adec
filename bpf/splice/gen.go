package splice

// The generated files (splice_bpfel.go/.o, splice_bpfeb.go/.o) are
// committed so that a build needs no clang; hack/bpf-generate.sh runs this
// line with Debian's pinned clang and --check fails CI when they differ.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -type peer splice splice.c

// Package sysfile reads and writes the small files of /proc and /sys (a
// sysctl, a table list) with plain system calls. os.ReadFile and
// os.WriteFile make an *os.File, register it with the runtime's poller and
// allocate a buffer; on the CNI ADD and DEL path those were the agent's
// garbage, so the agent and redirect use these instead.
package sysfile

import (
	"io"
	"io/fs"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read reads name whole into buf, growing it when the file is longer, and
// returns what it read. Errors are *fs.PathError, as os.ReadFile's: a
// missing file is fs.ErrNotExist.
func Read(name string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	defer unix.Close(fd)
	n := 0
	for {
		if n == len(buf) {
			buf = append(buf, 0)[:n]
			buf = buf[:cap(buf)]
		}
		got, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: name, Err: err}
		}
		if got == 0 {
			return buf[:n], nil
		}
		n += got
	}
}

// Write writes value to name the way os.WriteFile would (same flags and
// mode), in one write.
func Write(name, value string) error {
	fd, err := unix.Open(name, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: name, Err: err}
	}
	// The kernel only reads the bytes: a view of the string saves a copy.
	got, err := unix.Write(fd, unsafe.Slice(unsafe.StringData(value), len(value)))
	cerr := unix.Close(fd)
	switch {
	case err != nil:
		return &fs.PathError{Op: "write", Path: name, Err: err}
	case got < len(value):
		return &fs.PathError{Op: "write", Path: name, Err: io.ErrShortWrite}
	case cerr != nil:
		return &fs.PathError{Op: "close", Path: name, Err: cerr}
	}
	return nil
}

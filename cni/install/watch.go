package install

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dirWatch reports changes to the entries of one directory through inotify.
// It only says "something changed": the installer re-reads the directory
// anyway, so coalescing events loses nothing.
type dirWatch struct {
	file    *os.File
	changed chan struct{} // capacity 1: a pending signal absorbs later ones
	failed  chan error    // the watch is over (directory gone, read error)
}

// watchMask selects the events that can change which file is primary or what it holds.
const watchMask = unix.IN_CREATE | unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
	unix.IN_DELETE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// watchDir starts watching dir. Close stops it.
func watchDir(dir string) (*dirWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify init: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, watchMask); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inotify watch %s: %w", dir, err)
	}
	// A non-blocking fd handed to os.NewFile joins the runtime poller, so Close
	// wakes a pending Read instead of leaving the goroutine stuck in read(2).
	w := &dirWatch{
		file:    os.NewFile(uintptr(fd), "inotify:"+dir),
		changed: make(chan struct{}, 1),
		failed:  make(chan error, 1),
	}
	go w.read(dir)
	return w, nil
}

// Close stops the watch.
func (w *dirWatch) Close() error { return w.file.Close() }

func (w *dirWatch) read(dir string) {
	buf := make([]byte, 64*1024)
	for {
		n, err := w.file.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				err = nil
			}
			w.failed <- err
			return
		}
		relevant := false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			name := strings.TrimRight(string(nameBytes), "\x00")
			off += unix.SizeofInotifyEvent + int(ev.Len)
			switch {
			case ev.Mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_IGNORED) != 0:
				w.failed <- fmt.Errorf("watched directory %s was removed or moved", dir)
				return
			case ev.Mask&unix.IN_Q_OVERFLOW != 0:
				relevant = true // events were lost: re-read everything
			case strings.HasPrefix(name, tempPrefix):
				// weir's own temporary files: their rename shows up as an event on the target name.
			default:
				relevant = true
			}
		}
		if relevant {
			select {
			case w.changed <- struct{}{}:
			default:
			}
		}
	}
}

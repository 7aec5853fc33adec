package kubeworld

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IstiodBinDirEnv names the environment variable that points at a
// directory holding pilot-discovery (as hack/istiod-binary.sh prints).
const IstiodBinDirEnv = "WEIR_ISTIOD_BIN_DIR"

// IstioNamespace is the namespace istiod runs as part of: it must exist
// before istiod starts, or its CA waits for it forever.
const IstioNamespace = "istio-system"

// istiodReadyTimeout bounds istiod's start; it was ready in ~3 s on an
// idle machine.
const istiodReadyTimeout = 120 * time.Second

var (
	istiodDirOnce sync.Once
	istiodDir     string
	istiodDirErr  error
)

// Istiod is a real istiod (pilot-discovery) run out of cluster against a
// world's API server, every address on 127.0.0.1.
type Istiod struct {
	// XDSAddr serves plaintext xDS (ADS, state of the world and delta).
	XDSAddr string
	// HTTPAddr serves /ready and istiod's debug endpoints (/debug/...).
	HTTPAddr string

	w    *World
	bin  string
	dir  string
	args []string
	mu   sync.Mutex
	proc *process
}

// StartIstiod starts istiod against w and stops it when t ends. If the
// binary cannot be found or built the test is skipped, or fails under
// CI=true.
func StartIstiod(t testing.TB, w *World) *Istiod {
	t.Helper()
	istiodDirOnce.Do(func() {
		istiodDir, istiodDirErr = locateTool(IstiodBinDirEnv, "istiod-binary.sh", []string{"pilot-discovery"})
	})
	if istiodDirErr != nil {
		skipOrFail(t, "%v", istiodDirErr)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: IstioNamespace}}
	if _, err := w.Client.CoreV1().Namespaces().Create(Context(t), ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s for istiod: %v", IstioNamespace, err)
	}
	dir := t.TempDir()
	// Six ports, all on loopback: istiod's defaults bind every interface.
	ports, err := freePorts(6)
	if err != nil {
		t.Fatal(err)
	}
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	i := &Istiod{XDSAddr: addr(1), HTTPAddr: addr(0), w: w, bin: filepath.Join(istiodDir, "pilot-discovery"), dir: dir}
	i.args = []string{"discovery",
		"--kubeconfig", w.Kubeconfig,
		"--domain", "cluster.local",
		"--httpAddr", addr(0),
		"--grpcAddr", addr(1),
		"--secureGRPCAddr", addr(2),
		"--monitoringAddr", addr(3),
		"--httpsAddr", addr(4),
		"--ctrlz_address", "127.0.0.1",
		"--ctrlz_port", strconv.Itoa(ports[5]),
		"--log_output_level", "default:warn",
	}
	t.Cleanup(i.Stop)
	if err := i.Start(); err != nil {
		t.Fatal(err)
	}
	return i
}

// Start runs istiod (again, after Stop) on the same addresses and waits
// until it is ready.
func (i *Istiod) Start() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc != nil {
		return nil
	}
	var lastErr error
	// A restart may find a port still held for a moment by the process
	// just killed.
	for attempt := 0; attempt < startAttempts; attempt++ {
		p, err := i.w.startProcessEnv(i.dir, i.bin, []string{
			"POD_NAMESPACE=" + IstioNamespace, "POD_NAME=istiod-kubeworld",
		}, i.args...)
		if err != nil {
			return err
		}
		if lastErr = waitReady(p, http.DefaultClient, "http://"+i.HTTPAddr+"/ready", "", istiodReadyTimeout); lastErr == nil {
			i.proc = p
			return nil
		}
		p.kill()
		time.Sleep(time.Second)
	}
	return fmt.Errorf("start istiod: %w", lastErr)
}

// Stop kills istiod; Start brings it back.
func (i *Istiod) Stop() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.proc != nil {
		i.proc.kill()
		i.proc = nil
	}
}

// LogTail is the end of istiod's log, for failure messages.
func (i *Istiod) LogTail() string {
	b, err := os.ReadFile(filepath.Join(i.dir, "pilot-discovery.log"))
	if err != nil {
		return err.Error()
	}
	return tail(b, 20000)
}

// Debug fetches one of istiod's debug pages (/debug/adsz, /debug/registryz,
// /debug/syncz, ...), for failure messages.
func (i *Istiod) Debug(path string) string {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + i.HTTPAddr + path)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

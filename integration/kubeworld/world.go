package kubeworld

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ServiceCIDR is the range kube-apiserver allocates Service ClusterIPs from.
// The addresses exist only as API data: nothing routes them on the machine.
const ServiceCIDR = "10.96.0.0/16"

// Limits on how long a world may take to come up. The apiserver was ready in
// 4-8 s on a busy 2-core machine (load 12) and 13-29 s at load 15-48; the
// margins cover worse.
const (
	etcdReadyTimeout      = 30 * time.Second
	apiserverReadyTimeout = 120 * time.Second
	startAttempts         = 3 // a free port can be taken between probe and bind
)

// World is a running etcd and kube-apiserver, reachable only on 127.0.0.1,
// and the clients to talk to them as an administrator.
type World struct {
	// Config reaches the apiserver as the harness's admin user
	// (system:masters). Copy it before changing it.
	Config *rest.Config
	// Client is a clientset built from Config.
	Client kubernetes.Interface
	// Kubeconfig is the path of a kubeconfig file holding the same
	// identity, for programs under test and for kubectl.
	Kubeconfig string
	// BinDir holds the etcd, kube-apiserver and kubectl binaries in use.
	BinDir string
	// Host is the apiserver's URL, https://127.0.0.1:PORT.
	Host string

	dir       string
	opts      Options
	creds     *pki
	files     pkiFiles
	etcd      *process
	apiserver *process
	stopOnce  sync.Once
}

var (
	mainActive  atomic.Bool
	sharedOnce  sync.Once
	sharedMu    sync.Mutex // guards sharedWorld and sharedErr
	sharedWorld *World
	sharedErr   error
)

// Main runs the package's tests with one world shared by all of them and
// stops it afterwards. Call it from TestMain:
//
//	func TestMain(m *testing.M) { kubeworld.Main(m) }
//
// The world starts lazily, on the first [Start], so tests that do not need
// Kubernetes pay nothing.
func Main(m *testing.M) {
	mainActive.Store(true)
	code := m.Run()
	sharedMu.Lock()
	w := sharedWorld
	sharedMu.Unlock()
	if w != nil {
		w.Stop()
	}
	os.Exit(code)
}

// Start returns a running world for t. Under [Main] it is the world shared
// by the whole test binary, started on first use; otherwise it is a new
// world stopped when t ends. If the binaries cannot be found or built the
// test is skipped, or fails under CI=true.
func Start(t testing.TB) *World {
	t.Helper()
	if !mainActive.Load() {
		w, err := startWorld(t.Logf)
		if err != nil {
			failStart(t, err)
		}
		t.Cleanup(w.Stop)
		return w
	}
	sharedOnce.Do(func() {
		w, err := startWorld(t.Logf)
		sharedMu.Lock()
		defer sharedMu.Unlock()
		sharedWorld, sharedErr = w, err
	})
	if sharedErr != nil {
		failStart(t, sharedErr)
	}
	return sharedWorld
}

func failStart(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, errMissing) {
		skipOrFail(t, "%v", err)
	}
	t.Fatalf("start Kubernetes world: %v", err)
}

// Options place a world somewhere other than the test process's loopback:
// nodeworld runs the control plane inside a node's network namespace, where
// a kubelet on the same node reaches it. The zero value is the default
// world on 127.0.0.1.
type Options struct {
	// Wrap is put before every command the world starts (for example
	// nsenter into a node's namespaces); nsenter execs the program, so the
	// process the world tracks and kills is the program itself.
	Wrap []string
	// Address is the IPv4 address etcd and kube-apiserver bind and the
	// apiserver advertises; empty means 127.0.0.1. Any other address also
	// gets the endpoint reconciler back, so the "kubernetes" Service has a
	// real endpoint.
	Address string
	// Dial reaches Address from the test process; nil dials directly.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// AuthorizationMode replaces "RBAC" (e.g. "Node,RBAC" once kubelets
	// authenticate as nodes).
	AuthorizationMode string
	// APIServerArgs are appended to kube-apiserver's flags.
	APIServerArgs []string
}

// StartWith starts a private world placed by opts, stopped when t ends. It
// skips the test (fails it under CI=true) when the binaries cannot be had.
func StartWith(t testing.TB, opts Options) *World {
	t.Helper()
	w, err := startWorld(t.Logf, opts)
	if err != nil {
		failStart(t, err)
	}
	t.Cleanup(w.Stop)
	return w
}

// startWorld finds the binaries and starts etcd then kube-apiserver,
// retrying with new ports when a process dies at start (most likely a port
// taken between choosing and binding it).
func startWorld(logf func(string, ...any), opts ...Options) (*World, error) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	dir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		began := time.Now()
		w, err := startOnce(dir, o)
		if err == nil {
			logf("kubeworld: apiserver %s ready in %v (binaries %s)", w.Host, time.Since(began).Round(time.Millisecond), dir)
			return w, nil
		}
		lastErr = err
		if !errors.Is(err, errExitedEarly) {
			break
		}
		logf("kubeworld: attempt %d: %v; retrying on new ports", attempt, err)
	}
	return nil, lastErr
}

// errExitedEarly marks a process that died before it was ready.
var errExitedEarly = errors.New("exited before ready")

func startOnce(binDir string, opts Options) (w *World, err error) {
	root, err := os.MkdirTemp("", "kubeworld-")
	if err != nil {
		return nil, fmt.Errorf("create world directory: %w", err)
	}
	w = &World{BinDir: binDir, dir: root, opts: opts}
	addr := "127.0.0.1"
	var servingIPs []net.IP
	if opts.Address != "" {
		addr = opts.Address
		ip := net.ParseIP(addr).To4()
		if ip == nil {
			return nil, fmt.Errorf("kubeworld address %q: not an IPv4 address", addr)
		}
		// The first address of ServiceCIDR is the "kubernetes" Service that
		// in-cluster clients dial.
		servingIPs = []net.IP{ip, net.IPv4(10, 96, 0, 1)}
	}
	authz := "RBAC"
	if opts.AuthorizationMode != "" {
		authz = opts.AuthorizationMode
	}
	// The world made so far: a failed start returns a nil w, and what it
	// started must still stop (else the nil dereference panics the whole
	// test binary instead of letting startWorld retry).
	started := w
	defer func() {
		if err != nil {
			started.Stop()
		}
	}()

	creds, err := newPKI(servingIPs)
	if err != nil {
		return nil, err
	}
	pkiDir := filepath.Join(root, "pki")
	if err := os.Mkdir(pkiDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", pkiDir, err)
	}
	files, err := creds.write(pkiDir)
	if err != nil {
		return nil, err
	}
	w.creds, w.files = creds, files

	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdClient, etcdPeer, securePort := ports[0], ports[1], ports[2]

	etcdURL := "http://" + addr + ":" + strconv.Itoa(etcdClient)
	peerURL := "http://" + addr + ":" + strconv.Itoa(etcdPeer)
	w.etcd, err = w.startProcess(root, filepath.Join(binDir, "etcd"),
		"--name=kubeworld",
		"--data-dir="+filepath.Join(root, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubeworld="+peerURL,
		"--initial-cluster-state=new",
		// The data dir is thrown away at Stop: durability buys nothing.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	)
	if err != nil {
		return nil, err
	}
	etcdReady := &http.Client{Transport: &http.Transport{DialContext: opts.Dial}, Timeout: 5 * time.Second}
	if err := waitReady(w.etcd, etcdReady, etcdURL+"/health", `"health":"true"`, etcdReadyTimeout); err != nil {
		return nil, err
	}

	// 127.0.0.1 is no valid endpoint address, so the reconciler for the
	// "kubernetes" Service's endpoints would only log errors there.
	reconciler := "none"
	if addr != "127.0.0.1" {
		reconciler = "lease"
	}
	w.Host = "https://" + addr + ":" + strconv.Itoa(securePort)
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + addr,
		"--advertise-address=" + addr,
		"--secure-port=" + strconv.Itoa(securePort),
		"--tls-cert-file=" + files.servingCert,
		"--tls-private-key-file=" + files.servingKey,
		"--client-ca-file=" + files.caCert,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + files.saPub,
		"--service-account-signing-key-file=" + files.saKey,
		"--service-cluster-ip-range=" + ServiceCIDR,
		// RBAC, so ServiceAccount clients are held to their roles; the
		// admin certificate is in system:masters and passes regardless.
		"--authorization-mode=" + authz,
		"--allow-privileged=true",
		"--endpoint-reconciler-type=" + reconciler,
		// The apiserver's identity towards kubelets (logs, exec), where a
		// world has any.
		"--kubelet-client-certificate=" + files.adminCert,
		"--kubelet-client-key=" + files.adminKey,
		"--profiling=false",
		"--v=0",
	}
	w.apiserver, err = w.startProcess(root, filepath.Join(binDir, "kube-apiserver"), append(args, opts.APIServerArgs...)...)
	if err != nil {
		return nil, err
	}

	tlsConfig, err := adminTLS(creds)
	if err != nil {
		return nil, err
	}
	readyClient := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig, DialContext: opts.Dial}, Timeout: 5 * time.Second}
	if err := waitReady(w.apiserver, readyClient, w.Host+"/readyz", "ok", apiserverReadyTimeout); err != nil {
		return nil, err
	}

	w.Config = &rest.Config{
		Host: w.Host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   creds.caCert,
			CertData: creds.adminCert,
			KeyData:  creds.adminKey,
		},
		// Tests create objects in bursts; client-side throttling would only
		// add latency that belongs to no component under test.
		QPS:   500,
		Burst: 1000,
		Dial:  opts.Dial,
	}
	w.Client, err = kubernetes.NewForConfig(w.Config)
	if err != nil {
		return nil, fmt.Errorf("build clientset for %s: %w", w.Host, err)
	}
	w.Kubeconfig = filepath.Join(root, "kubeconfig")
	if err := writeKubeconfig(w.Kubeconfig, w.Host, creds); err != nil {
		return nil, err
	}
	return w, nil
}

// Stop kills kube-apiserver and etcd and removes the world's directory.
// Safe to call more than once; the shared world is stopped by [Main].
func (w *World) Stop() {
	w.stopOnce.Do(func() {
		// Kill, not terminate: the data dir is discarded, so a graceful
		// shutdown would only cost time.
		for _, p := range []*process{w.apiserver, w.etcd} {
			if p != nil {
				p.kill()
			}
		}
		if w.dir != "" {
			_ = os.RemoveAll(w.dir)
		}
	})
}

// PKIFile returns the path of the world's key material by name: "ca.crt",
// "sa.key" (the ServiceAccount token signer, for a controller-manager),
// "admin.crt" and "admin.key" (a system:masters client certificate, e.g.
// for the apiserver's own calls to kubelets). Removed by Stop.
func (w *World) PKIFile(name string) string {
	return filepath.Join(w.dir, "pki", name)
}

// WriteKubeconfig writes a kubeconfig at path for user in groups, with a
// fresh client certificate from the world's CA: a kubelet is
// system:node:NAME in system:nodes, held to the Node authorizer.
func (w *World) WriteKubeconfig(path, user string, groups []string) error {
	cert, key, err := w.creds.clientCert(user, groups)
	if err != nil {
		return err
	}
	return writeKubeconfigFor(path, w.Host, w.creds.caCert, user, cert, key)
}

// LogPath returns where a component's output goes ("etcd" or
// "kube-apiserver"), for a test that wants to quote it on failure. The file
// is removed by Stop.
func (w *World) LogPath(component string) string {
	return filepath.Join(w.dir, component+".log")
}

// process is one control-plane program, its output going to a log file.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, valid after done
}

func (w *World) startProcess(dir, bin string, args ...string) (*process, error) {
	return w.startProcessEnv(dir, bin, nil, args...)
}

// startProcessEnv starts bin in dir (under the world's Wrap, if any) with
// env added to the test's environment, its output appended to
// dir/<name>.log (a restarted process keeps its earlier log).
func (w *World) startProcessEnv(dir, bin string, env []string, args ...string) (*process, error) {
	name := filepath.Base(bin)
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", logPath, err)
	}
	argv := append(append(append([]string(nil), w.opts.Wrap...), bin), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Dir = dir
	// If the test binary dies without Stop (a panic, -timeout), the
	// control plane goes with it instead of holding ports and memory.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logTail returns the end of the process's log, for error messages.
func (p *process) logTail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", p.log, err)
	}
	return tail(b, 3000)
}

// waitReady polls url until it answers 200 with a body containing want,
// failing fast if the process exits.
func waitReady(p *process, client *http.Client, url, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		select {
		case <-p.done:
			return fmt.Errorf("%s %w (%v); log:\n%s", p.name, errExitedEarly, p.err, p.logTail())
		default:
		}
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), want) {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready at %s after %v (last: %s); log:\n%s", p.name, url, timeout, last, p.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func adminTLS(creds *pki) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(creds.adminCert, creds.adminKey)
	if err != nil {
		return nil, fmt.Errorf("load admin key pair: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(creds.caCert) {
		return nil, errors.New("add world CA to pool: no certificate parsed")
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// writeKubeconfig writes a self-contained kubeconfig (certificates inline)
// so a program under test needs nothing but the one file.
func writeKubeconfig(path, host string, creds *pki) error {
	return writeKubeconfigFor(path, host, creds.caCert, adminUser, creds.adminCert, creds.adminKey)
}

func writeKubeconfigFor(path, host string, ca []byte, user string, cert, key []byte) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubeworld"] = &clientcmdapi.Cluster{Server: host, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts["kubeworld"] = &clientcmdapi.Context{Cluster: "kubeworld", AuthInfo: user}
	cfg.CurrentContext = "kubeworld"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// freePorts asks the kernel for n distinct free TCP ports on 127.0.0.1.
// They are released before use, so another process may take one; startWorld
// retries when that happens.
func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Context returns a context for API calls in a test, cancelled when the test
// ends, with a bound so a hung call fails the test instead of its binary.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

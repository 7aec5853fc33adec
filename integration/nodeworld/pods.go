package nodeworld

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// PodNetns returns the network namespace of a running pod as a path the
// test process can open (/proc/PID/ns/net of its first container): the
// runtime's own /run/netns entries exist only in the node's mount
// namespace.
func (n *Node) PodNetns(pod *corev1.Pod) (string, error) {
	if len(pod.Status.ContainerStatuses) == 0 || pod.Status.ContainerStatuses[0].ContainerID == "" {
		return "", fmt.Errorf("pod %s/%s has no container yet", pod.Namespace, pod.Name)
	}
	id := strings.TrimPrefix(pod.Status.ContainerStatuses[0].ContainerID, "containerd://")
	pid, err := n.TaskPID(id)
	if err != nil {
		return "", fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return "/proc/" + strconv.Itoa(pid) + "/ns/net", nil
}

// TaskPID returns the PID of a running container's task in containerd.
func (n *Node) TaskPID(containerID string) (int, error) {
	out, err := n.ctr("tasks", "ls")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == containerID && f[2] == "RUNNING" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no running task %s in containerd", containerID)
}

// KillContainer kills a container's task with SIGKILL, as a crash would;
// kubelet sees it exit and restarts it.
func (n *Node) KillContainer(containerID string) error {
	_, err := n.ctr("tasks", "kill", "--signal", "SIGKILL", strings.TrimPrefix(containerID, "containerd://"))
	return err
}

// Get GETs url from the node netns and returns the status and body.
func (n *Node) Get(url string, timeout time.Duration) (int, string, error) {
	resp, err := n.HTTPClient(timeout).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

// Fetch asks the nodetest server in pod (at podIP) to GET url from inside
// its own network namespace, and returns what it got; a non-200 answer is
// an error carrying the body.
func (n *Node) Fetch(podIP, url string) (string, error) {
	code, body, err := n.Get("http://"+podIP+":8080/fetch?url="+url, 10*time.Second)
	if err != nil {
		return "", fmt.Errorf("ask pod %s to fetch %s: %w", podIP, url, err)
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("pod %s fetching %s: HTTP %d: %s", podIP, url, code, strings.TrimSpace(body))
	}
	return body, nil
}

// Command rmq-client is the real RocketMQ client (Apache's
// rocketmq-client-go) that weir's end-to-end tests run through the agent:
//
//	rmq-client produce -ns ADDR -topic T -n N        send N messages "msg-0".."msg-N-1"
//	rmq-client consume -ns ADDR -topic T -want N     push-consume until N distinct messages
//
// Each send prints "sent <body> <status>"; each delivery prints
// "got <body> <brokerName> <queueId> <offset>". consume exits 0 once it has
// seen want distinct bodies and then -settle without a new one (late
// duplicates would show up there), after shutting the consumer down
// (which persists its offsets to the brokers).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/apache/rocketmq-client-go/v2/rlog"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rmq-client produce|consume [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	ns := fs.String("ns", "", "name server address (host:port)")
	topic := fs.String("topic", "weir-test", "topic")
	group := fs.String("group", "weir-group", "producer or consumer group")
	n := fs.Int("n", 10, "messages to send")
	want := fs.Int("want", 10, "distinct messages to consume")
	timeout := fs.Duration("timeout", 90*time.Second, "give up after")
	settle := fs.Duration("settle", 3*time.Second, "wait for duplicates after the last new message")
	fs.Parse(os.Args[2:])
	rlog.SetLogLevel("warn")
	var err error
	switch os.Args[1] {
	case "produce":
		err = produce(*ns, *topic, *group, *n, *timeout)
	case "consume":
		err = consume(*ns, *topic, *group, *want, *timeout, *settle)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rmq-client:", err)
		os.Exit(1)
	}
}

func produce(ns, topic, group string, n int, timeout time.Duration) error {
	p, err := rocketmq.NewProducer(
		producer.WithNameServer([]string{ns}),
		producer.WithGroupName(group),
		producer.WithRetry(0),
		producer.WithSendMsgTimeout(10*time.Second),
	)
	if err != nil {
		return fmt.Errorf("new producer: %w", err)
	}
	if err := p.Start(); err != nil {
		return fmt.Errorf("start producer: %w", err)
	}
	defer p.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for i := range n {
		body := fmt.Sprintf("msg-%d", i)
		res, err := p.SendSync(ctx, primitive.NewMessage(topic, []byte(body)))
		if err != nil {
			return fmt.Errorf("send %s: %w", body, err)
		}
		fmt.Printf("sent %s %d %s\n", body, res.Status, res.MessageQueue.BrokerName)
	}
	return nil
}

func consume(ns, topic, group string, want int, timeout, settle time.Duration) error {
	c, err := rocketmq.NewPushConsumer(
		consumer.WithNameServer([]string{ns}),
		consumer.WithGroupName(group),
		consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset),
		consumer.WithAutoCommit(true),
	)
	if err != nil {
		return fmt.Errorf("new consumer: %w", err)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	last := make(chan struct{}, 1)
	err = c.Subscribe(topic, consumer.MessageSelector{}, func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			fmt.Printf("got %s %s %d %d\n", m.Body, m.Queue.BrokerName, m.Queue.QueueId, m.QueueOffset)
			seen[string(m.Body)]++
		}
		select {
		case last <- struct{}{}:
		default:
		}
		return consumer.ConsumeSuccess, nil
	})
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if err := c.Start(); err != nil {
		return fmt.Errorf("start consumer: %w", err)
	}
	deadline := time.After(timeout)
	for {
		mu.Lock()
		got := len(seen)
		mu.Unlock()
		if got >= want {
			break
		}
		select {
		case <-last:
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			c.Shutdown()
			return fmt.Errorf("%d of %d messages after %s", got, want, timeout)
		}
	}
	// Late duplicates, if any, arrive now.
	for {
		select {
		case <-last:
			continue
		case <-time.After(settle):
		}
		break
	}
	if err := c.Shutdown(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// Package redis is the RESP codec of proxy/rpc: commands (arrays of bulk
// strings, or inline lines) from clients, every RESP2 and RESP3 reply type
// from servers (RESP3 streamed strings excepted: redis-server never sends
// them).
//
// Balancing. RESP has no request ids: a connection answers in order, so
// the framework pipelines commands from many clients over one connection
// per server and matches replies first in, first out. Each command is
// balanced on its own with cluster.Pick, and its balancing key is the hash
// of its first key (of the {tag} inside it, if any, as Redis Cluster
// does): with a ring_hash or maglev cluster a key always reaches the same
// server, which a key-value store needs, since balancing GET and SET of
// one key over different servers splits the data. Other balancers ignore
// the key. Keyless commands (PING, INFO, SCAN, …) use the client's address.
//
// Pinning. Commands whose meaning depends on the server connection they
// run on are not balanced: transactions (MULTI, WATCH), subscriptions
// (SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE, MONITOR), blocking reads (BLPOP,
// BRPOP, BRPOPLPUSH, BLMOVE, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP, XREAD and
// XREADGROUP with BLOCK), connection state (SELECT, AUTH, HELLO, CLIENT,
// RESET, READONLY, READWRITE, ASKING), WAIT, WAITAOF, QUIT, SYNC and
// PSYNC. The choice is the simplest correct one: once a client sends one,
// after every earlier command has been answered, its connection is
// relayed as bytes (L4) to one server connection of its own for the rest
// of its life, picked by that command's key. A client that AUTHs or
// SELECTs first is therefore never balanced per command; replaying such
// state on shared connections is future work.
//
// Errors weir makes itself ("no endpoint available", a lost server
// connection) are "-ERR weir: …" replies in the command's place, so
// pipelined replies stay in step; bytes that are not RESP get "-ERR
// Protocol error: …" and the connection closes, as redis-server does.
// Nothing is sent again on another server.
//
// PING is forwarded, not answered locally: RESP has no heartbeat frame,
// and a client's PING asks whether the server is there.
package redis

'use strict';
// bolt-peer is a SOFABolt server or client made of the real sofa-bolt-node
// package (the npm registry's, installed by hack/rpc-peers.sh), for weir's
// end-to-end tests. Run with NODE_PATH=<rpc peers dir>/node_modules.
//
//   node bolt-peer.js serve NAME PORT
//     answers every request with "NAME <service> <first argument>" and
//     acks heartbeats.
//   node bolt-peer.js call HOST PORT SERVICE CALLS
//     opens one connection, sends a heartbeat, then CALLS requests one after
//     another (hessian2, SofaRequest), and prints each answer on a line;
//     exits 1 on an error answer, a missing heartbeat ack, or a timeout.

const net = require('net');
const pump = require('pump');
const protocol = require('sofa-bolt-node');

function serve(name, port) {
  const server = net.createServer(socket => {
    const options = { sentReqs: new Map() };
    const encoder = protocol.encoder(options);
    const decoder = protocol.decoder(options);
    pump(encoder, socket, decoder, () => {});
    decoder.on('request', req => {
      encoder.writeResponse(req, {
        isError: false,
        appResponse: { $class: 'java.lang.String', $: `${name} ${req.data.serverSignature} ${req.data.args[0]}` },
      });
    });
    decoder.on('heartbeat', hb => encoder.writeHeartbeatAck(hb));
  });
  server.listen(Number(port), () => console.log('ready'));
}

function call(host, port, service, calls) {
  const options = { sentReqs: new Map() };
  const socket = net.connect(Number(port), host);
  const encoder = protocol.encoder(options);
  const decoder = protocol.decoder(options);
  const fail = msg => { console.error('bolt-peer: ' + msg); process.exit(1); };
  const timer = setTimeout(() => fail('timed out'), 30000);
  pump(encoder, socket, decoder, err => { if (err && done < calls) fail('connection: ' + err.message); });
  let id = 1;
  let done = 0;
  const next = () => {
    if (done === calls) {
      clearTimeout(timer);
      socket.destroy();
      return;
    }
    encoder.writeRequest(++id, {
      args: [{ $class: 'java.lang.String', $: 'call' + done }],
      serverSignature: service,
      methodName: 'hello',
      timeout: 10000,
    });
  };
  decoder.on('heartbeat_ack', () => { console.log('heartbeat ack'); next(); });
  decoder.on('response', res => {
    if (res.data.error) fail('call ' + done + ': ' + res.data.error.message);
    console.log(res.data.appResponse);
    done++;
    next();
  });
  socket.once('connect', () => encoder.writeHeartbeat(1, { clientUrl: 'weir-test' }));
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'serve') serve(args[0], args[1]);
else if (cmd === 'call') call(args[0], args[1], args[2], Number(args[3]));
else { console.error('usage: bolt-peer.js serve NAME PORT | call HOST PORT SERVICE CALLS'); process.exit(2); }

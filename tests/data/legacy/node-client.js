// The registration app's client, as it sends a command today (its send code verbatim),
// run N times in a row: node node-client.js PORT N. Prints how each connection ended.
const net = require('net');
const [PORT, N] = process.argv.slice(2).map(Number);
const APIDB = 'wodapidb', location = '127.0.0.1';
const fromAddress = 'registration@example.com', recipient = 'jupyter3@example.com';

function send(stdid) {
  return new Promise((resolve) => {
    const subject = `CREATE ${stdid} 4242`, content = 'WKSHP-Ansible101';
    const client = new net.Socket();
    client.setTimeout(2000);
    const msg = `HELO ${APIDB}\nMAIL FROM: ${fromAddress}\nRCPT TO: ${recipient}\nDATA\nSubject: ${subject}\n${content}\n.\n`;
    client.connect(PORT, location, function () { client.write(msg); })
      .on('data', function (data) { client.destroy(); resolve('data'); })
      .on('timeout', () => { client.destroy(); resolve('timeout'); })
      .on('error', (e) => resolve('error ' + e.code));
  });
}

(async () => {
  const ended = {};
  for (let stdid = 0; stdid < N; stdid++) {
    const how = await send(stdid);
    ended[how] = (ended[how] || 0) + 1;
  }
  console.log(JSON.stringify(ended));
})();

// The registration app's mails for people, sent as the app sends them when it has no SendGrid
// key: its HTML body stripped of tags, then its crude client (one connection a mail, the whole
// dialogue written at once, bare LF, closed at the first byte read). Usage:
//   node node-people-mails.js PORT MAILS.json     (MAILS: [{from, to, subject, html}, ...])
// Prints how each connection ended, as JSON.
const net = require('net');
const fs = require('fs');
const [PORT, FILE] = process.argv.slice(2);
const APIDB = 'wodapidb.example.com', location = '127.0.0.1';

function sendPostfixEmail({ from, recipient, subject, content }) {
  return new Promise((resolve) => {
    const client = new net.Socket();
    client.setTimeout(2000);
    const msg = `HELO ${APIDB}\nMAIL FROM: ${from}\nRCPT TO: ${recipient}\nDATA\nSubject: ${subject}\n${content}\n.\n`;
    client.connect(Number(PORT), location, function () { client.write(msg); })
      .on('error', (e) => { client.destroy(); resolve('error ' + e.code); })
      .on('data', () => { client.destroy(); resolve('data'); })
      .on('timeout', () => { client.destroy(); resolve('timeout'); })
      .on('close', () => resolve('close'));
  });
}

(async () => {
  const ended = [];
  for (const mail of JSON.parse(fs.readFileSync(FILE, 'utf8'))) {
    // The app sends the plain-text version: its HTML with every tag taken out.
    const content = mail.html.replace(/<(?:.|\n)*?>/gm, '');
    ended.push(await sendPostfixEmail({ from: mail.from, recipient: mail.to, subject: mail.subject, content }));
  }
  console.log(JSON.stringify(ended));
})();

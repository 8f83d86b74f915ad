// The vendor's reference signing, as in the seeds: JSON.stringify the body,
// then base64(HMAC-SHA256(base64decode(secret), timestamp + METHOD + path + json)).
// Reads JSON lines {secret, timestamp, method, path, value}; writes {body_b64, signature}.
const crypto = require('crypto');
const readline = require('readline');

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  if (!line) return;
  const c = JSON.parse(line);
  const json = c.value === undefined ? '{}' : JSON.stringify(c.value);
  const payload = c.timestamp + c.method + c.path + json;
  const hmac = crypto.createHmac('sha256', Buffer.from(c.secret, 'base64'));
  const signature = hmac.update(payload).digest('base64');
  process.stdout.write(JSON.stringify({ body_b64: Buffer.from(json, 'utf8').toString('base64'), signature }) + '\n');
});

// server_test.js — `ds4 serve` under the official OpenAI Node client and raw
// HTTP. Expected texts come from `ds4 generate` (one sequence, no server), so
// a batching or plumbing error in the server shows up as a mismatch.
// Run by tests/test_server_openai.sh with DS4 (binary) and DS4_MODEL (a tiny
// model directory) in the environment. Servers listen on 127.0.0.1 only.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const net = require('node:net');
const http = require('node:http');
const { OpenAI } = require('openai');

const DS4 = process.env.DS4;
const MODEL = process.env.DS4_MODEL;
const NAME = 'tiny';
const KEY = 'sk-ds4-test';
const CHAT_STOP = '\n<|';

const children = new Set();
process.on('exit', () => { for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } } });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Start `ds4 serve` on a free loopback port; resolves once it listens.
async function startServer(args) {
  const child = spawn(DS4, ['serve', '--model', MODEL, '--name', NAME, '--host', '127.0.0.1',
    '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => {
    children.delete(child);
    resolve({ code, signal });
  }));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${err}`)), 30000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    exited.then(({ code }) => { clearTimeout(timer); reject(new Error(`server exited (${code}): ${err}`)); });
  });
  return { child, port, exited, url: `http://127.0.0.1:${port}`, stderr: () => err };
}

function client(srv, apiKey = KEY) {
  return new OpenAI({ apiKey, baseURL: `${srv.url}/v1`, maxRetries: 0, timeout: 30000 });
}

// One HTTP request; resolves {status, headers, body (string)}.
function request(srv, method, path, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: srv.port, method, path, headers, agent: false },
      (res) => {
        const parts = [];
        res.on('data', (d) => parts.push(d));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers,
          body: Buffer.concat(parts).toString('utf8') }));
      });
    req.on('error', reject);
    req.setTimeout(20000, () => req.destroy(new Error('timeout')));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

// Raw bytes over TCP; resolves with everything the server sent until it closed.
function raw(srv, bytes, ms = 5000) {
  return new Promise((resolve) => {
    const s = net.connect(srv.port, '127.0.0.1');
    const parts = [];
    const timer = setTimeout(() => s.destroy(), ms);
    s.on('data', (d) => parts.push(d));
    s.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(parts).toString('latin1')); });
    s.on('error', () => {});
    s.write(bytes);
  });
}

// `ds4 generate` output as the server would render it in JSON (invalid UTF-8
// replaced WHATWG-style, NUL replaced).
function generate(args) {
  const buf = execFileSync(DS4, ['generate', '--model', MODEL, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const s = new TextDecoder('utf-8').decode(buf);
  assert.ok(s.endsWith('\n'));
  return s.slice(0, -1).replace(/\0/g, '\uFFFD');
}

async function tokenize(srv, text) {
  const r = await request(srv, 'POST', '/tokenize', JSON.stringify({ content: text }),
    { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' });
  assert.equal(r.status, 200, r.body);
  return JSON.parse(r.body).tokens;
}

async function health(srv) {
  const r = await request(srv, 'GET', '/health');
  return JSON.parse(r.body);
}

// Poll until pred(health) or ms pass; returns the elapsed ms or throws.
async function waitHealth(srv, pred, ms, what) {
  const t0 = Date.now();
  for (;;) {
    const h = await health(srv);
    if (pred(h)) return Date.now() - t0;
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}: ${JSON.stringify(h)}`);
    await sleep(10);
  }
}

async function metrics(srv) {
  const r = await request(srv, 'GET', '/metrics', undefined, { Authorization: `Bearer ${KEY}` });
  assert.equal(r.status, 200);
  return r.body;
}

function metric(text, name) {
  const m = new RegExp(`^${name.replace(/[{}"=/]/g, (c) => `\\${c}`)} ([0-9.e+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

async function rejects(promise, status, check) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.status, status, `expected HTTP ${status}, got ${e.status}: ${e.message}`);
    if (check) check(e);
    return e;
  }
  assert.fail(`expected HTTP ${status}, the request succeeded`);
}

const chatTemplate = (msgs) => msgs.map((m) => `<|${m.role}|>\n${m.content}\n`).join('') + '<|assistant|>\n';

// ---- server A: API key, 8 slots ------------------------------------------------
let A;
let api;
test.before(async () => {
  A = await startServer(['--api-key', KEY, '--slots', '8', '--queue', '64', '--quiet']);
  api = client(A);
});
test.after(async () => {
  if (A) {
    A.child.kill('SIGTERM');
    assert.equal((await A.exited).code, 0, A.stderr());     // clean exit (and no leak report under ASan)
  }
});

test('models list and retrieve', async () => {
  const list = await api.models.list();
  assert.deepEqual(list.data.map((m) => m.id), [NAME]);
  assert.equal((await api.models.retrieve(NAME)).id, NAME);
  await rejects(api.models.retrieve('nope'), 404);
});

test('greedy completion equals ds4 generate, usage counts the prompt', async () => {
  const r = await api.completions.create({ model: NAME, prompt: 'the cat', max_tokens: 12, temperature: 0 });
  const c = r.choices[0];
  assert.equal(c.text, generate(['--prompt', 'the cat', '-n', '12', '--temp', '0']));
  assert.equal(r.object, 'text_completion');
  assert.equal(r.usage.prompt_tokens, (await tokenize(A, 'the cat')).length + 1);   // + <|bos|>
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 12);
  if (c.finish_reason === 'length') assert.equal(r.usage.completion_tokens, 12);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('sampling parameters and seed reach the sampler', async () => {
  const r = await api.completions.create({ model: NAME, prompt: 'a dog', max_tokens: 16, temperature: 0.9,
    top_p: 0.95, seed: 7, top_k: 40, min_p: 0.01 });
  assert.equal(r.choices[0].text, generate(['--prompt', 'a dog', '-n', '16', '--temp', '0.9', '--top-k', '40',
    '--top-p', '0.95', '--min-p', '0.01', '--seed', '7']));
  const again = await api.completions.create({ model: NAME, prompt: 'a dog', max_tokens: 16, temperature: 0.9,
    top_p: 0.95, seed: 7, top_k: 40, min_p: 0.01 });
  assert.equal(again.choices[0].text, r.choices[0].text);
});

test('ignore_eos generates exactly max_tokens', async () => {
  const r = await api.completions.create({ model: NAME, prompt: 'one', max_tokens: 30, seed: 3, ignore_eos: true });
  assert.equal(r.usage.completion_tokens, 30);
  assert.equal(r.choices[0].finish_reason, 'length');
  const zero = await api.completions.create({ model: NAME, prompt: 'one', max_tokens: 0 });
  assert.equal(zero.usage.completion_tokens, 0);
  assert.equal(zero.choices[0].text, '');
});

test('chat uses the documented template', async () => {
  const messages = [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'the cat' }];
  const r = await api.chat.completions.create({ model: NAME, messages, max_tokens: 10, temperature: 0 });
  const tpl = chatTemplate(messages);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content,
    generate(['--prompt', tpl, '-n', '10', '--temp', '0', '--stop', CHAT_STOP]));
  assert.equal(r.usage.prompt_tokens, (await tokenize(A, tpl)).length + 1);
  // array-of-parts content renders the same
  const parts = [{ role: 'system', content: [{ type: 'text', text: 'be ' }, { type: 'text', text: 'brief' }] },
    { role: 'user', content: 'the cat' }];
  const r2 = await api.chat.completions.create({ model: NAME, messages: parts, max_tokens: 10, temperature: 0 });
  assert.equal(r2.choices[0].message.content, r.choices[0].message.content);
});

test('streamed completion equals the non-streamed one, ends with usage', async () => {
  const body = { model: NAME, prompt: 'the bird', max_tokens: 20, temperature: 0, ignore_eos: true };
  const full = await api.completions.create(body);
  const stream = await api.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
  let text = '';
  const chunks = [];
  for await (const ch of stream) {
    chunks.push(ch);
    if (ch.choices.length) text += ch.choices[0].text;
  }
  assert.equal(text, full.choices[0].text);
  const last = chunks[chunks.length - 1];
  assert.deepEqual(last.choices, []);
  assert.deepEqual(last.usage, full.usage);
  const fin = chunks[chunks.length - 2];
  assert.equal(fin.choices[0].finish_reason, 'length');
  assert.equal(fin.usage.completion_tokens, 20);
  assert.ok(chunks.slice(0, -2).every((ch) => ch.choices[0].finish_reason === null));
});

test('streamed chat announces the role, equals the non-streamed reply', async () => {
  const messages = [{ role: 'user', content: 'one two' }];
  const full = await api.chat.completions.create({ model: NAME, messages, max_tokens: 12, temperature: 0 });
  const stream = await api.chat.completions.create({ model: NAME, messages, max_tokens: 12, temperature: 0, stream: true });
  let text = '';
  let first = null;
  let finish = null;
  let usage = null;
  for await (const ch of stream) {
    if (!first) first = ch;
    assert.equal(ch.object, 'chat.completion.chunk');
    text += ch.choices[0].delta.content || '';
    if (ch.choices[0].finish_reason) { finish = ch.choices[0].finish_reason; usage = ch.usage; }
  }
  assert.equal(first.choices[0].delta.role, 'assistant');
  assert.equal(text, full.choices[0].message.content);
  assert.equal(finish, full.choices[0].finish_reason);
  assert.deepEqual(usage, full.usage);
});

test('stop strings cut the text before the first match', async () => {
  const body = { model: NAME, prompt: 'one two', max_tokens: 24, temperature: 0, ignore_eos: true };
  const base = (await api.completions.create(body)).choices[0].text;
  let k = -1;
  for (let i = 2; i < base.length; i++) {
    const ch = base[i];
    if (ch >= ' ' && ch <= '~' && base.indexOf(ch) === i) { k = i; break; }
  }
  assert.ok(k > 0, `no usable stop character in ${JSON.stringify(base)}`);
  const stop = base[k];
  const r = await api.completions.create({ ...body, stop: [stop, 'never-appears'] });
  assert.equal(r.choices[0].text, base.slice(0, k));
  assert.equal(r.choices[0].finish_reason, 'stop');
  const stream = await api.completions.create({ ...body, stop, stream: true });
  let text = '';
  for await (const ch of stream) text += ch.choices[0].text;
  assert.equal(text, base.slice(0, k));
});

test('client-visible errors: 400, 404, 401', async () => {
  await rejects(api.completions.create({ model: NAME, prompt: 'x', max_tokens: 'ten' }), 400,
    (e) => assert.equal(e.param, 'max_tokens'));
  await rejects(api.completions.create({ model: 'nope', prompt: 'x' }), 404,
    (e) => assert.equal(e.code, 'model_not_found'));
  await rejects(api.completions.create({ model: NAME, prompt: 'x', temperature: -1 }), 400);
  await rejects(api.completions.create({ model: NAME, prompt: 'x', n: 2 }), 400);
  await rejects(api.completions.create({ model: NAME }), 400, (e) => assert.equal(e.param, 'prompt'));
  await rejects(api.completions.create({ model: NAME, prompt: 'a '.repeat(400) }), 400,
    (e) => assert.equal(e.code, 'context_length_exceeded'));
  await rejects(api.chat.completions.create({ model: NAME, messages: [] }), 400);
  await rejects(api.chat.completions.create({ model: NAME, messages: [{ role: 'robot', content: 'x' }] }), 400);
  await rejects(api.chat.completions.create({ model: NAME,
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }), 400);
  await rejects(client(A, 'wrong-key').models.list(), 401);
  await rejects(client(A, 'wrong-key').completions.create({ model: NAME, prompt: 'x' }), 401);
});

test('raw HTTP: malformed bodies, limits, methods, auth', async () => {
  const auth = { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' };
  const post = (path, body, h = auth) => request(A, 'POST', path, body, h);
  const isErr = (r, status) => {
    assert.equal(r.status, status, r.body);
    const e = JSON.parse(r.body).error;
    assert.equal(typeof e.message, 'string');
    assert.ok(e.message.length > 0);
    assert.equal(typeof e.type, 'string');
    assert.ok('param' in e && 'code' in e);
    return e;
  };
  for (const bad of ['{"prompt":', '', 'null', '[1,2]', '"x"', '{"prompt":"x"} trailing', '{"prompt":"x",}',
    '\xff\xfe', '['.repeat(100000), '{"a":'.repeat(50000)]) {
    isErr(await post('/v1/completions', bad), 400);
    isErr(await post('/v1/chat/completions', bad), 400);
  }
  const wrongTypes = [{ prompt: 5 }, { prompt: 'x', stream: 'yes' }, { prompt: 'x', stop: 5 },
    { prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'] }, { prompt: 'x', seed: 1.5 },
    { prompt: 'x', top_p: 0 }, { prompt: 'x', logit_bias: { 1: 2 } }, { prompt: 'x', max_tokens: -1 },
    { prompt: 'x', max_tokens: 1e20 }, { prompt: [1, 2, 100000] }, { prompt: [1, 'a'] }, { prompt: [] },
    { prompt: 'x', model: 7 }, { prompt: 'x', stream_options: 3 }, { prompt: 'x', temperature: 'hot' },
    { prompt: ['a', 'b'] }];
  for (const b of wrongTypes) isErr(await post('/v1/completions', JSON.stringify(b)), 400);
  isErr(await post('/v1/chat/completions', JSON.stringify({ messages: 'hi' })), 400);
  isErr(await post('/v1/chat/completions', JSON.stringify({ messages: [{ content: 'x' }] })), 400);
  isErr(await post('/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: 5 }] })), 400);
  isErr(await post('/v1/completions', JSON.stringify({ model: 'other', prompt: 'x' })), 404);
  // body over the 1 MiB default limit: 413 (declared and chunked)
  isErr(await post('/v1/completions', JSON.stringify({ prompt: 'a'.repeat(1100000) })), 413);
  const chunked = await new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: A.port, method: 'POST', path: '/v1/completions',
      headers: auth, agent: false }, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => resolve({ status: res.statusCode, body: b }));
    });
    req.on('error', reject);
    for (let i = 0; i < 12; i++) req.write('x'.repeat(100000));
    req.end();
  });
  isErr(chunked, 413);
  // a chunked body under the limit works
  const small = await new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: A.port, method: 'POST', path: '/v1/completions',
      headers: auth, agent: false }, (res) => {
      let b = '';
      res.on('data', (d) => { b += d; });
      res.on('end', () => resolve({ status: res.statusCode, body: b }));
    });
    req.on('error', reject);
    req.write('{"prompt": "the ');
    req.write('cat", "max_tokens": 3}');
    req.end();
  });
  assert.equal(small.status, 200, small.body);
  assert.equal(JSON.parse(small.body).usage.completion_tokens <= 3, true);
  // methods and paths
  isErr(await request(A, 'GET', '/v1/completions', undefined, auth), 405);
  isErr(await request(A, 'POST', '/health', '{}', auth), 405);
  isErr(await request(A, 'GET', '/nope', undefined, auth), 404);
  isErr(await request(A, 'GET', '/v1/models/other', undefined, auth), 404);
  // auth
  isErr(await post('/v1/completions', '{"prompt":"x"}', { 'Content-Type': 'application/json' }), 401);
  isErr(await post('/v1/completions', '{"prompt":"x"}', { Authorization: 'Bearer nope' }), 401);
  isErr(await request(A, 'GET', '/metrics'), 401);
  assert.equal((await request(A, 'GET', '/health')).status, 200);
  // odd but valid requests
  const weird = await post('/v1/completions', Buffer.from('{"prompt":"\xff\xfe ok \\u0000 x","max_tokens":4}', 'latin1'));
  assert.equal(weird.status, 200, weird.body);
  JSON.parse(weird.body);
  const ids = await post('/v1/completions', JSON.stringify({ prompt: [5, 6, 7], max_tokens: 2 }));
  assert.equal(ids.status, 200, ids.body);
  assert.equal(JSON.parse(ids.body).usage.prompt_tokens, 3);
  // raw sockets: HTTP/1.0, garbage, a request cut short; the server stays up
  const r10 = await raw(A, `POST /v1/completions HTTP/1.0\r\nAuthorization: Bearer ${KEY}\r\n` +
    'Content-Length: 32\r\n\r\n{"prompt":"cat","max_tokens":2} ');
  assert.match(r10, /^HTTP\/1\.[01] 200/);
  assert.match(r10, /"usage"/);
  const garbage = await raw(A, 'HELLO THERE\r\n\r\n');
  assert.ok(garbage === '' || /^HTTP\/1\.[01] 4\d\d/.test(garbage), garbage);
  await raw(A, `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"pro`, 300);
  assert.equal((await health(A)).status, 'ok');
});

test('every field with every JSON type, and mutated bodies: 200 or a JSON error, never a crash', async () => {
  const auth = { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' };
  const values = [null, true, false, 0, 1, -1, 2.5, 1e300, -1e300, '', 's', [], [1], ['a'], [[1]], {}, { a: 1 },
    { type: 'text' }];
  const fields = ['model', 'prompt', 'messages', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p',
    'top_k', 'min_p', 'seed', 'n', 'stream', 'stream_options', 'stop', 'logprobs', 'top_logprobs', 'echo',
    'suffix', 'presence_penalty', 'frequency_penalty', 'logit_bias', 'user', 'tools', 'tool_choice',
    'response_format', 'ignore_eos', 'best_of', 'content', 'tokens', 'add_special', 'seconds', 'fps'];
  const bases = {
    '/v1/completions': { model: NAME, prompt: 'the cat', max_tokens: 2 },
    '/v1/chat/completions': { model: NAME, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 },
    '/tokenize': { content: 'the cat' },
    '/detokenize': { tokens: [1, 2] },
    '/v1/videos': { prompt: 'a ball' },
  };
  const cases = [];
  const own = { '/tokenize': ['model', 'content', 'add_special'], '/detokenize': ['model', 'tokens'],
    '/v1/videos': ['model', 'prompt', 'seconds', 'fps', 'response_format'] };
  for (const [path, base] of Object.entries(bases)) {
    for (const f of own[path] || fields) {
      for (const v of values) {
        const body = { ...base, [f]: v };
        if (f !== 'max_tokens' && f !== 'max_completion_tokens') body.max_tokens = base.max_tokens;
        cases.push([path, f, v, body]);
      }
    }
  }
  const seen = new Set();
  for (let i = 0; i < cases.length; i += 8) {          // 8 requests in flight at a time
    await Promise.all(cases.slice(i, i + 8).map(async ([path, f, v, body]) => {
      const r = await request(A, 'POST', path, JSON.stringify(body), auth);
      seen.add(r.status);
      assert.ok([200, 400, 404].includes(r.status), `${path} ${f}=${JSON.stringify(v)}: ${r.status} ${r.body}`);
      if (r.headers['content-type'] === 'text/event-stream') {
        assert.match(r.body, /data: \[DONE\]\n\n$/);
      } else {
        const j = JSON.parse(r.body);
        if (r.status !== 200) assert.equal(typeof j.error.message, 'string');
      }
    }));
  }
  assert.ok(seen.has(200) && seen.has(400) && seen.has(404));
  // byte-level mutations of valid bodies (deterministic pseudo-random)
  let x = 12345;
  const rnd = (n) => { x = (x * 1103515245 + 12345) % 2147483648; return x % n; };
  for (let i = 0; i < 300; i++) {
    const path = Object.keys(bases)[rnd(5)];
    const b = Buffer.from(JSON.stringify(bases[path]));
    const edits = 1 + rnd(4);
    for (let k = 0; k < edits; k++) b[rnd(b.length)] = rnd(256);
    const r = await request(A, 'POST', path, b, auth);
    assert.ok([200, 400, 404].includes(r.status), `${b.toString('latin1')}: ${r.status}`);
  }
  assert.equal((await health(A)).status, 'ok');
});

test('tokenize, detokenize, videos', async () => {
  const auth = { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' };
  const text = 'caf\u00e9 na\u00efve \u2014 \u2713 \u65e5\u672c the cat';
  const ids = await tokenize(A, text);
  assert.ok(ids.length > 0 && ids.every((i) => Number.isInteger(i)));
  const d = await request(A, 'POST', '/detokenize', JSON.stringify({ tokens: ids }), auth);
  assert.equal(JSON.parse(d.body).content, text);
  const withBos = await request(A, 'POST', '/tokenize', JSON.stringify({ content: 'x', add_special: true }), auth);
  assert.equal(JSON.parse(withBos.body).tokens.length, (await tokenize(A, 'x')).length + 1);
  const bad = await request(A, 'POST', '/detokenize', JSON.stringify({ tokens: [1, -3] }), auth);
  assert.equal(bad.status, 400);
  const v = await request(A, 'POST', '/v1/videos', JSON.stringify({ prompt: 'a red ball', seconds: 2, fps: 12 }), auth);
  assert.equal(v.status, 400);
  assert.match(JSON.parse(v.body).error.message, /video/);
  const v2 = await request(A, 'POST', '/v1/videos', JSON.stringify({ prompt: 3 }), auth);
  assert.equal(v2.status, 400);
});

test('many concurrent streams finish with correct usage and unmixed text', async () => {
  // steps slowed a little so that the requests overlap on this tiny model
  const C = await startServer(['--slots', '8', '--queue', '64', '--throttle-ms', '3', '--quiet']);
  const c = client(C);
  try {
  const N = 24;
  const prompts = Array.from({ length: N }, (_, i) => `stream ${i}: the cat`);
  const want = prompts.map((_, i) => 6 + (i % 7));
  const run = async (i) => {
    const s = await c.completions.create({ model: NAME, prompt: prompts[i], max_tokens: want[i],
      temperature: 0.8, seed: 100 + i, ignore_eos: true, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage = null;
    for await (const ch of s) {
      if (ch.choices.length) text += ch.choices[0].text;
      else usage = ch.usage;
    }
    return { text, usage };
  };
  const got = await Promise.all(prompts.map((_, i) => run(i)));
  for (let i = 0; i < N; i++) {
    assert.equal(got[i].usage.completion_tokens, want[i], `stream ${i}`);
    assert.equal(got[i].usage.prompt_tokens, (await tokenize(C, prompts[i])).length + 1);
  }
  // the same requests one at a time give the same texts (a batch mixes nothing)
  for (const i of [0, 7, 13, 23]) {
    const one = await c.completions.create({ model: NAME, prompt: prompts[i], max_tokens: want[i],
      temperature: 0.8, seed: 100 + i, ignore_eos: true });
    assert.equal(got[i].text, one.choices[0].text, `stream ${i}`);
  }
  const m = await metrics(C);
  assert.equal(metric(m, 'ds4_engine_step_sequences_max'), 8, 'sequences were batched together');
  assert.equal(metric(m, 'ds4_slots_active'), 0);
  assert.equal(metric(m, 'ds4_queue_depth'), 0);
  } finally {
    C.child.kill('SIGTERM');
    assert.equal((await C.exited).code, 0);
  }
});

test('metrics: Prometheus text with counters and histograms', async () => {
  const m = await metrics(A);
  for (const name of ['ds4_prompt_tokens_total', 'ds4_generated_tokens_total', 'ds4_tokens_per_second',
    'ds4_queue_depth', 'ds4_kv_cache_used_bytes', 'ds4_kv_cache_capacity_bytes',
    'ds4_time_to_first_token_seconds_count', 'ds4_time_per_output_token_seconds_count']) {
    assert.notEqual(metric(m, name), undefined, name);
  }
  assert.ok(metric(m, 'ds4_requests_total{endpoint="/v1/completions",status="200"}') > 10);
  assert.ok(metric(m, 'ds4_requests_total{endpoint="/v1/completions",status="400"}') > 10);
  assert.ok(metric(m, 'ds4_requests_total{endpoint="/v1/completions",status="413"}') >= 2);
  assert.ok(metric(m, 'ds4_requests_total{endpoint="/v1/completions",status="401"}') >= 2);
  assert.ok(metric(m, 'ds4_kv_cache_capacity_bytes') > 0);
  assert.ok(metric(m, 'ds4_generated_tokens_total') >= 100);
  assert.match(m, /ds4_time_to_first_token_seconds_bucket\{le="\+Inf"\} \d+/);
  // histogram buckets are cumulative
  const b = [...m.matchAll(/ds4_time_per_output_token_seconds_bucket\{le="[^"]+"\} (\d+)/g)].map((x) => Number(x[1]));
  for (let i = 1; i < b.length; i++) assert.ok(b[i] >= b[i - 1]);
  assert.equal(b[b.length - 1], metric(m, 'ds4_time_per_output_token_seconds_count'));
});

// ---- server B: one slot, a queue of one, slowed steps -----------------------------
test('queue full is 429; a disconnected stream frees its slot at once', async () => {
  const B = await startServer(['--slots', '1', '--queue', '1', '--throttle-ms', '25', '--quiet']);
  try {
    const b = client(B);
    const body = { model: NAME, prompt: 'the cat', max_tokens: 200, ignore_eos: true, stream: true };
    const s1 = await b.completions.create(body);
    const it1 = s1[Symbol.asyncIterator]();
    await it1.next();                                       // s1 is decoding
    // a queued request whose client leaves is dropped from the queue at once
    const q = net.connect(B.port, '127.0.0.1');
    q.on('error', () => {});
    const qreq = JSON.stringify({ prompt: 'x', max_tokens: 5, stream: true });
    q.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ${qreq.length}\r\n\r\n${qreq}`);
    await waitHealth(B, (h) => h.queue === 1, 3000, 'raw request queued');
    q.destroy();
    await waitHealth(B, (h) => h.queue === 0 && h.slots_busy === 1, 1000, 'queued request dropped');
    const s2p = b.completions.create(body);                 // s2 waits in the queue
    await waitHealth(B, (h) => h.queue === 1 && h.slots_busy === 1, 3000, 's2 queued');
    await rejects(b.completions.create({ model: NAME, prompt: 'x', max_tokens: 2 }), 429,
      (e) => assert.equal(e.code, 'queue_full'));
    s1.controller.abort();                                  // client goes away mid-stream
    const s2 = await s2p;
    const it2 = s2[Symbol.asyncIterator]();
    const t0 = Date.now();
    await it2.next();                                       // s2 got the slot
    assert.ok(Date.now() - t0 < 2000, 's2 started soon after s1 left');
    await waitHealth(B, (h) => h.queue === 0 && h.slots_busy === 1, 1000, 's2 running');
    s2.controller.abort();
    const ms = await waitHealth(B, (h) => h.slots_busy === 0, 1000, 'slot freed after abort');
    assert.ok(ms < 1000);
    // a non-streamed request whose client disconnects frees its slot too
    const sock = net.connect(B.port, '127.0.0.1');
    sock.on('error', () => {});
    const req = JSON.stringify({ prompt: 'the cat', max_tokens: 200, ignore_eos: true });
    sock.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ${req.length}\r\n\r\n${req}`);
    await waitHealth(B, (h) => h.slots_busy === 1, 3000, 'non-stream running');
    sock.destroy();
    await waitHealth(B, (h) => h.slots_busy === 0, 1000, 'slot freed after close');
    const m = await metrics(B);
    assert.ok(metric(m, 'ds4_cancelled_total') >= 3);
    assert.equal(metric(m, 'ds4_rejected_queue_full_total'), 1);
    // and the server still serves
    const ok = await b.completions.create({ model: NAME, prompt: 'x', max_tokens: 2 });
    assert.ok(ok.usage.completion_tokens <= 2);
  } finally {
    B.child.kill('SIGKILL');
    await B.exited;
  }
});

test('SIGTERM lets in-flight requests finish, refuses new ones, exits 0', async () => {
  const B = await startServer(['--slots', '2', '--throttle-ms', '25', '--quiet']);
  const b = client(B);
  const s = await b.completions.create({ model: NAME, prompt: 'the cat', max_tokens: 20, ignore_eos: true,
    stream: true, stream_options: { include_usage: true } });
  const it = s[Symbol.asyncIterator]();
  await it.next();
  B.child.kill('SIGTERM');
  await sleep(100);
  await rejects(b.completions.create({ model: NAME, prompt: 'x', max_tokens: 2 }), 503);
  let usage = null;
  for (;;) {
    const { value, done } = await it.next();
    if (done) break;
    if (!value.choices.length) usage = value.usage;
  }
  assert.equal(usage.completion_tokens, 20);
  const ex = await B.exited;
  assert.equal(ex.code, 0, B.stderr());
});

test('a second SIGTERM cancels in-flight streams cleanly', async () => {
  const B = await startServer(['--slots', '2', '--throttle-ms', '25', '--grace', '30', '--quiet']);
  const b = client(B);
  const s = await b.completions.create({ model: NAME, prompt: 'the cat', max_tokens: 250, ignore_eos: true, stream: true });
  const it = s[Symbol.asyncIterator]();
  await it.next();
  B.child.kill('SIGTERM');
  await sleep(200);
  B.child.kill('SIGTERM');
  const t0 = Date.now();
  let err = null;
  try {
    for (;;) { const { done } = await it.next(); if (done) break; }
  } catch (e) { err = e; }
  assert.ok(err, 'the stream ended with an error event');
  assert.match(String(err.message), /shutting down/);
  const ex = await B.exited;
  assert.equal(ex.code, 0, B.stderr());
  assert.ok(Date.now() - t0 < 5000);
});

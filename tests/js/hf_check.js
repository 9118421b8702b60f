// hf_check.js — checks that a tokenizer trained and saved by ds4 gives the same
// ids in the Hugging Face `tokenizers` library as in ds4, on hand-picked
// strings (via `ds4 tokenize --text`) and on a large generated text mixing
// ASCII, every kind of Unicode whitespace, letters, numbers, marks, symbols
// and emoji (via `ds4 tokenize --in --out SHARD`), and again with a hand-made
// tokenizer that merges every byte pair, so that any difference in the
// pre-tokenizer split shows in the ids. Run by tests/test_tokenizer_hf.sh:
//   node hf_check.js path/to/ds4 WORKDIR
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');
const { Tokenizer } = require('tokenizers');

const [ds4, work] = process.argv.slice(2);
if (!ds4 || !work) {
  console.error('usage: node hf_check.js path/to/ds4 WORKDIR');
  process.exit(2);
}

// Deterministic PRNG (mulberry32) so failures reproduce.
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SYL = ['th', 'e', 'an', 'd', 'in', 'g', 're', 'st', 'o', 'on', 'er', 'a', 'ly', 'ing',
  'wa', 'ter', 'ball', 'red', 'bl', 'ue', 'fa', 'll', 's', 'ou', 'nd'];
const EXTRA = [', ', '. ', '! ', "'s ", "'t ", "'re ", "'ll ", "'ve ", "'m ", "'d ", '\n', '\n\n', '  ',
  '\t', ' 42 ', ' 1999', ' 3.14 ', ' café ', ' naïve ', ' 日本語 ', ' Привет ', ' — ', ' ½ ', ' €5 ',
  '\u00a0', ' "quoted" ', '...', ' 😀 ', ' ١٢٣ ', ' Ελληνικά ', ' עברית ', ' e\u0301 '];

function englishish(r, n) {
  let s = '';
  while (s.length < n) {
    if (r() < 0.1) s += String.fromCharCode(65 + Math.floor(r() * 26));
    const k = 1 + Math.floor(r() * 3);
    for (let i = 0; i < k; i++) s += SYL[Math.floor(r() * SYL.length)];
    s += r() < 0.75 ? ' ' : EXTRA[Math.floor(r() * EXTRA.length)];
  }
  return s;
}

// Code points from many classes, including every Unicode whitespace character.
const SPACES = [0x9, 0xa, 0xb, 0xc, 0xd, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2005, 0x200a, 0x2028,
  0x2029, 0x202f, 0x205f, 0x3000, 0x200b, 0xfeff, 0x180e];
function randomCodePoint(r) {
  const x = r();
  const pick = (a, b) => a + Math.floor(r() * (b - a + 1));
  if (x < 0.30) return pick(0x20, 0x7e);                 // ASCII printable
  if (x < 0.40) return SPACES[Math.floor(r() * SPACES.length)];
  if (x < 0.47) return pick(0xa0, 0x24f);                // Latin-1, Latin Extended
  if (x < 0.52) return pick(0x300, 0x36f);               // combining marks
  if (x < 0.57) return pick(0x2000, 0x206f);             // general punctuation
  if (x < 0.62) return pick(0x660, 0x669);               // Arabic-Indic digits
  if (x < 0.67) return pick(0x2150, 0x218b);             // number forms (Nl, No)
  if (x < 0.72) return pick(0x4e00, 0x4f00);             // CJK
  if (x < 0.77) return pick(0x1f300, 0x1faff);           // emoji and symbols (astral)
  if (x < 0.80) return 0x27;                             // apostrophe (contractions)
  let c;
  do c = pick(0x80, 0x10ffff); while (c >= 0xd800 && c <= 0xdfff);
  return c;                                              // anything, unassigned included
}

function mixed(r, n) {
  const parts = [];
  for (let i = 0; i < n; i++) {
    parts.push(r() < 0.5 ? String.fromCodePoint(randomCodePoint(r)) : SYL[Math.floor(r() * SYL.length)]);
    if (r() < 0.05) parts.push(['s', 't', 're', 've', 'm', 'll', 'd'][Math.floor(r() * 7)]);
  }
  return parts.join('');
}

// GPT-2 bytes_to_unicode: printable bytes map to themselves, the others to 256, 257, ...
function byteChars() {
  const chars = [];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    chars.push(String.fromCodePoint(printable ? b : 256 + n++));
  }
  return chars;
}

// A tokenizer.json whose merges join every ordered pair of bytes (in a
// scrambled order, as [left, right] arrays): 256 + 65536 tokens.
function allPairsTokenizer() {
  const ch = byteChars();
  const vocab = {};
  ch.forEach((c, b) => { vocab[c] = b; });
  const order = [];
  for (let i = 0; i < 65536; i++) order.push((i * 40503) & 0xffff);   // a permutation of 0..65535
  const merges = order.map((p) => [ch[p >> 8], ch[p & 255]]);
  merges.forEach(([a, b], i) => { vocab[a + b] = 256 + i; });
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
      end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
  };
}

async function main() {
  const r = rng(12345);
  const trainFile = path.join(work, 'train.txt');
  const tokFile = path.join(work, 'tokenizer.json');
  fs.writeFileSync(trainFile, englishish(r, 300000) + mixed(r, 20000));
  execFileSync(ds4, ['tokenizer', 'train', '--in', trainFile, '--vocab', '1200', '--out', tokFile, '--quiet'],
    { stdio: ['ignore', 'ignore', 'inherit'] });
  const hf = Tokenizer.fromFile(tokFile);
  let failures = 0;

  const strings = [
    'Hello, world!',
    "it's  we're   they'll I'd you've I'm don't IT'S",
    '1234567 3.14159 1e10 -42 +7 0x1F',
    '   leading and trailing   ',
    'tabs\tand\t\tnewlines\n\n\nand \r\n crlf',
    'café naïve Привет 日本語 Ελληνικά עברית',
    'emoji 😀 👍🏽 family 👨\u200d👩\u200d👧 flags 🇫🇷',
    'em—dash – en dash … ellipsis “quotes” ‘single’',
    '½ ¾ ² ³ Ⅻ ١٢٣ ௰',
    'nbsp\u00a0here \u00a0 and\u3000ideographic\u2003em space\u200bzero width',
    "a'b'c''d ''s '",
    'x = y + 1; // comment /* block */ #include <stdio.h>',
    'e\u0301 combining a\u0308\u0301 marks',
    'waterball redblue fall',
    ' ',
    '\n',
    '',
  ];
  for (const s of strings) {
    const out = execFileSync(ds4, ['tokenize', '--tokenizer', tokFile, '--text', s]).toString().trim();
    const ours = out === '' ? [] : out.split(',').map(Number);
    const theirs = (await hf.encode(s)).getIds();
    const same = ours.length === theirs.length && ours.every((v, i) => v === theirs[i]);
    if (!same) {
      failures++;
      console.log(`MISMATCH for ${JSON.stringify(s)}\n  ds4: ${ours.join(',')}\n  hf:  ${theirs.join(',')}`);
    }
    const back = await hf.decode(theirs, false);
    if (back !== s) {
      failures++;
      console.log(`HF decode of ${JSON.stringify(s)} gave ${JSON.stringify(back)}`);
    }
  }
  console.log(`${strings.length} strings compared with ds4 tokenize --text`);

  // A large mixed text through a shard.
  const big = englishish(r, 200000) + mixed(r, 100000) + englishish(r, 50000);
  const bigFile = path.join(work, 'big.txt');
  const shard = path.join(work, 'big.tok');
  fs.writeFileSync(bigFile, big);
  execFileSync(ds4, ['tokenize', '--tokenizer', tokFile, '--in', bigFile, '--out', shard], { stdio: 'ignore' });
  const buf = fs.readFileSync(shard);
  if (buf.toString('latin1', 0, 8) !== 'DS4TOK01') throw new Error('shard magic');
  const n = Number(buf.readBigUInt64LE(8));
  const ids = (await hf.encode(big)).getIds();
  let first = -1;
  for (let i = 0; i < Math.min(n, ids.length); i++) {
    if (buf.readUInt32LE(16 + 4 * i) !== ids[i]) { first = i; break; }
  }
  if (n !== ids.length || first >= 0) {
    failures++;
    console.log(`MISMATCH on the large text: ds4 ${n} ids, hf ${ids.length}, first difference at ${first}`);
  }
  console.log(`large text: ${Buffer.byteLength(big)} bytes, ${n} ids from ds4, ${ids.length} from HF`);

  // Merges learned by ds4 never cross ds4's own piece boundaries, so a split
  // that differs from HF's may go unseen above. A hand-made tokenizer that
  // merges every pair of bytes makes each boundary visible in the ids: both
  // sides load it, encode the large text (plus the strings), and must agree.
  const pairFile = path.join(work, 'pairs.json');
  fs.writeFileSync(pairFile, JSON.stringify(allPairsTokenizer()));
  const pairText = strings.join('\n') + big;
  const pairIn = path.join(work, 'pairs.txt');
  fs.writeFileSync(pairIn, pairText);
  execFileSync(ds4, ['tokenize', '--tokenizer', pairFile, '--in', pairIn, '--out', shard], { stdio: 'ignore' });
  const pbuf = fs.readFileSync(shard);
  const pn = Number(pbuf.readBigUInt64LE(8));
  const pids = (await Tokenizer.fromFile(pairFile).encode(pairText)).getIds();
  let pfirst = -1;
  for (let i = 0; i < Math.min(pn, pids.length); i++) {
    if (pbuf.readUInt32LE(16 + 4 * i) !== pids[i]) { pfirst = i; break; }
  }
  if (pn !== pids.length || pfirst >= 0) {
    failures++;
    console.log(`MISMATCH with the all-pairs tokenizer: ds4 ${pn} ids, hf ${pids.length}, ` +
      `first difference at ${pfirst}`);
  }
  console.log(`all-pairs tokenizer: ${pn} ids from ds4, ${pids.length} from HF`);
  if (failures) {
    console.log(`FAIL: ${failures} mismatches`);
    process.exit(1);
  }
  console.log('OK: Hugging Face tokenizers gives the same ids as ds4');
}

main().catch((e) => {
  console.error(`hf_check: ${e.stack || e}`);
  process.exit(1);
});

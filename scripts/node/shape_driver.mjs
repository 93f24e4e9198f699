#!/usr/bin/env node
// Drive the official Electric TypeScript client (@electric-sql/client ShapeStream + Shape)
// from another process, one JSON object per line.
//
// stdin commands:
//   {"cmd":"subscribe","id":"s1","url":"http://127.0.0.1:PORT/v1/shape",
//    "params":{"table":"items","where":"...","params":{"1":"..."},"columns":["id","title"]},
//    "headers":{...}, "log":"full"|"changes_only", "liveSse":false, "retryOnError":false,
//    "messages":false}   (messages: also report every message the ShapeStream delivers)
//   {"cmd":"unsubscribe","id":"s1"}
//   {"cmd":"rows","id":"s1"}        -> one "rows" event with the Shape's current rows (reason "query")
//   {"cmd":"requests","id":"s1"}    -> one "requests" event: the last HTTP exchanges of that stream
//   {"cmd":"ping"}                  -> {"event":"pong"}
//   {"cmd":"close"}                 -> aborts every stream, prints {"event":"closed"}, exits 0
//
// stdout events (one JSON object per line):
//   {"event":"ready","client":"1.5.26","node":"v20..."}
//   {"event":"rows","id","seq","reason":"notify"|"query","rows":{key: row},"handle","offset","upToDate"}
//   {"event":"control","id","control":"must-refetch"|"up-to-date"|..., "handle","offset"}
//   {"event":"messages","id","messages":[...]}  (with "messages": each batch the stream delivered, as received:
//                                                changes, move-in/move-out events, controls)
//   {"event":"http","id","status","method","url","headers","body"}  (every non-2xx response, body truncated)
//   {"event":"neterror","id","method","url","message","cause"}      (a request failed below HTTP)
//   {"event":"error","id","name","message","status"?,"url"?,"body"?,"requests":[...]}
//   {"event":"retry","id","name","message","status"}  (retryOnError: onError returned {} for this error)
//   {"event":"warn","message"}       (anything the client printed with console.warn / console.error)
//
// Values are kept as the raw Postgres text the server sent: the parser maps every type that the
// client would otherwise convert (ints, floats, bool, json) to the identity function. (Columns with
// dims > 0 are still split into JS arrays by the client; avoid array columns here.)
// The client is loaded from node_peer/ (scripts/npm-peer) or from REPLICA_NODE_PEER.

import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const peerDir = resolve(process.env.REPLICA_NODE_PEER || join(here, '..', '..', 'node_peer'))
const MAX_REQUESTS = 40
const BODY_PREVIEW = 600

function emit(obj) {
  process.stdout.write(
    JSON.stringify(obj, (_k, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n',
  )
}

// Anything the client logs is a hint that the server misbehaved: forward it as an event.
for (const level of ['warn', 'error']) {
  console[level] = (...args) => {
    const message = args
      .filter((a) => !(a instanceof Error && a.message === 'stack trace'))
      .map((a) => (a instanceof Error ? `${a.name}: ${a.message}` : typeof a === 'string' ? a : safeJson(a)))
      .join(' ')
    emit({ event: 'warn', level, message })
  }
}
console.log = (...args) => emit({ event: 'log', message: args.map(String).join(' ') })

function safeJson(value) {
  try {
    return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))
  } catch {
    return String(value)
  }
}

process.on('unhandledRejection', (reason) => {
  emit({ event: 'error', id: null, name: 'UnhandledRejection', message: describe(reason) })
})
process.on('uncaughtException', (err) => {
  emit({ event: 'error', id: null, name: 'UncaughtException', message: describe(err) })
})

function describe(err) {
  if (err instanceof Error) return `${err.name}: ${err.message}`
  return String(err)
}

async function loadClient() {
  const pkgDir = join(peerDir, 'node_modules', '@electric-sql', 'client')
  let pkg
  try {
    pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'))
  } catch {
    throw new Error(`@electric-sql/client not found under ${peerDir}: run scripts/npm-peer`)
  }
  const entry = pkg.exports?.['.']?.import?.default ?? pkg.module ?? 'dist/index.mjs'
  const mod = await import(pathToFileURL(join(pkgDir, entry)).href)
  return { mod, version: pkg.version }
}

// Every type the default parser converts, mapped to the identity: rows stay Postgres text.
const RAW_PARSER = Object.fromEntries(
  ['int2', 'int4', 'int8', 'float4', 'float8', 'bool', 'json', 'jsonb', 'numeric', 'oid'].map((t) => [
    t,
    (v) => v,
  ]),
)

const INTERESTING_HEADERS = [
  'electric-handle',
  'electric-offset',
  'electric-cursor',
  'electric-up-to-date',
  'electric-schema',
  'electric-has-data',
  'cache-control',
  'etag',
  'content-type',
  'retry-after',
]

const subs = new Map()

function pickHeaders(headers) {
  const out = {}
  for (const h of INTERESTING_HEADERS) if (headers.has(h)) out[h] = headers.get(h)
  return out
}

function makeFetch(sub) {
  return async (input, init) => {
    const url = input.toString()
    const method = (init?.method ?? 'GET').toUpperCase()
    const started = Date.now()
    let res
    try {
      res = await fetch(input, init)
    } catch (err) {
      if (!(init?.signal?.aborted)) {
        record(sub, { method, url, error: describe(err), ms: Date.now() - started })
        // The client retries network errors silently (with backoff): surface them.
        emit({ event: 'neterror', id: sub.id, method, url, message: describe(err), cause: describe(err?.cause) })
      }
      throw err
    }
    const entry = { method, url, status: res.status, headers: pickHeaders(res.headers), ms: Date.now() - started }
    record(sub, entry)
    // Read a preview of the body without consuming the client's copy.
    res
      .clone()
      .text()
      .then((text) => {
        entry.body = text.length > BODY_PREVIEW ? text.slice(0, BODY_PREVIEW) + '…' : text
        if (res.status >= 300) {
          emit({ event: 'http', id: sub.id, status: res.status, method, url, headers: entry.headers, body: entry.body })
        }
      })
      .catch(() => {})
    return res
  }
}

function record(sub, entry) {
  sub.requests.push(entry)
  if (sub.requests.length > MAX_REQUESTS) sub.requests.shift()
}

function rowsEvent(sub, reason) {
  const rows = {}
  for (const [key, row] of sub.shape.currentValue) rows[key] = row
  emit({
    event: 'rows',
    id: sub.id,
    seq: ++sub.seq,
    reason,
    rows,
    handle: sub.stream.shapeHandle ?? null,
    offset: sub.stream.lastOffset ?? null,
    upToDate: sub.shape.isUpToDate,
  })
}

function errorEvent(sub, err) {
  const ev = { event: 'error', id: sub?.id ?? null, name: err?.name ?? 'Error', message: describe(err) }
  if (err && typeof err === 'object') {
    if ('status' in err) ev.status = err.status
    if ('url' in err) ev.url = err.url
    if ('text' in err && err.text) ev.body = String(err.text).slice(0, BODY_PREVIEW)
    if ('json' in err && err.json !== undefined) ev.json = err.json
    if ('headers' in err && err.headers) ev.headers = err.headers
  }
  if (sub) ev.requests = sub.requests.slice(-10)
  emit(ev)
}

function subscribe(client, msg) {
  const { ShapeStream, Shape } = client
  if (!msg.id || !msg.url || !msg.params?.table) throw new Error('subscribe needs id, url and params.table')
  if (subs.has(msg.id)) throw new Error(`subscription ${msg.id} already exists`)
  const abort = new AbortController()
  const sub = { id: msg.id, abort, requests: [], seq: 0, stream: null, shape: null }
  subs.set(msg.id, sub)
  sub.stream = new ShapeStream({
    url: msg.url,
    params: msg.params,
    headers: msg.headers,
    log: msg.log,
    liveSse: msg.liveSse ?? false,
    parser: RAW_PARSER,
    signal: abort.signal,
    fetchClient: makeFetch(sub),
    // By default never let the client retry its way around a fault: report and stop.
    // With retryOnError, do what applications are told to do for transient failures
    // (return {} from onError: retry from the current offset) and report a "retry" event.
    onError: (err) => {
      if (abort.signal.aborted) return undefined
      if (msg.retryOnError) {
        emit({ event: 'retry', id: sub.id, name: err?.name ?? 'Error', message: describe(err), status: err?.status })
        return {}
      }
      errorEvent(sub, err)
      return undefined
    },
  })
  sub.shape = new Shape(sub.stream)
  // Second subscriber: report control messages (the Shape swallows them).
  sub.stream.subscribe(
    (messages) => {
      if (msg.messages) emit({ event: 'messages', id: sub.id, messages })
      for (const m of messages) {
        const control = m?.headers?.control
        if (control && control !== 'up-to-date') {
          emit({ event: 'control', id: sub.id, control, handle: sub.stream.shapeHandle ?? null })
        }
      }
    },
    () => {},
  )
  sub.shape.subscribe(() => rowsEvent(sub, 'notify'))
}

function unsubscribe(id) {
  const sub = subs.get(id)
  if (!sub) return
  subs.delete(id)
  sub.abort.abort()
  sub.shape?.unsubscribeAll()
  sub.stream?.unsubscribeAll()
}

async function main() {
  let client
  try {
    const loaded = await loadClient()
    client = loaded.mod
    emit({ event: 'ready', client: loaded.version, node: process.version })
  } catch (err) {
    emit({ event: 'error', id: null, name: 'LoadError', message: describe(err) })
    process.exit(3)
  }

  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
  const shutdown = (code) => {
    for (const id of [...subs.keys()]) unsubscribe(id)
    emit({ event: 'closed' })
    // Let stdout drain, then exit even though aborted fetches may still hold handles.
    process.stdout.write('', () => process.exit(code))
  }
  rl.on('close', () => shutdown(0))
  rl.on('line', (line) => {
    if (!line.trim()) return
    let msg
    try {
      msg = JSON.parse(line)
    } catch (err) {
      emit({ event: 'error', id: null, name: 'BadCommand', message: `not JSON: ${line.slice(0, 200)}` })
      return
    }
    try {
      switch (msg.cmd) {
        case 'subscribe':
          subscribe(client, msg)
          break
        case 'unsubscribe':
          unsubscribe(msg.id)
          emit({ event: 'unsubscribed', id: msg.id })
          break
        case 'rows': {
          const sub = subs.get(msg.id)
          if (!sub) throw new Error(`no subscription ${msg.id}`)
          rowsEvent(sub, 'query')
          break
        }
        case 'requests': {
          const sub = subs.get(msg.id)
          if (!sub) throw new Error(`no subscription ${msg.id}`)
          emit({ event: 'requests', id: msg.id, requests: sub.requests })
          break
        }
        case 'ping':
          emit({ event: 'pong' })
          break
        case 'close':
          shutdown(0)
          break
        default:
          throw new Error(`unknown cmd ${JSON.stringify(msg.cmd)}`)
      }
    } catch (err) {
      emit({ event: 'error', id: msg.id ?? null, name: 'BadCommand', message: describe(err) })
    }
  })
}

main()

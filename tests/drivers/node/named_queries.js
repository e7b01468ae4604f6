// node-postgres named queries ({name, text, values}) through Sluice: every client
// uses the same names for different SQL. Usage: node named_queries.js CONNSTRING CLIENTS ROUNDS
const { Client } = require('pg');

async function run(conn, n, rounds) {
  const c = new Client({ connectionString: conn });
  await c.connect();
  try {
    for (let i = 1; i <= rounds; i++) {
      const r = await c.query({ name: 'calc', text: `SELECT $1::int * ${n + 1} AS x`, values: [i] });
      if (r.rows[0].x !== i * (n + 1)) throw new Error(`client ${n} round ${i}: got ${r.rows[0].x}`);
      const v = await c.query({ name: 'item', text: 'SELECT v FROM items WHERE id = $1', values: [i] });
      if (v.rows[0].v !== `item ${i}`) throw new Error(`client ${n} round ${i}: got ${v.rows[0].v}`);
    }
  } finally {
    await c.end();
  }
}

const [conn, clients, rounds] = process.argv.slice(2);
Promise.all([...Array(Number(clients)).keys()].map((n) => run(conn, n, Number(rounds))))
  .then(() => console.log('ok'))
  .catch((e) => { console.error(e); process.exit(1); });

// The report form's proof of work: find a nonce such that SHA-256(challenge ":" nonce) starts with `bits` zero
// bits, then send the form. No third party, no tracking; the server checks the same in one hash.
'use strict';
(function () {
  const form = document.getElementById('report-form');
  if (!form) return;
  const status = document.getElementById('report-status');
  const zeroBits = (bytes) => {
    let n = 0;
    for (const b of bytes) {
      if (b === 0) { n += 8; continue; }
      return n + Math.clz32(b) - 24;
    }
    return n;
  };
  let solving = false;
  form.addEventListener('submit', async (event) => {
    if (form.elements.nonce.value) return;
    event.preventDefault();
    if (solving) return;
    solving = true;
    status.textContent = 'Doing the spam check…';
    const challenge = form.elements.challenge.value;
    const bits = Number(form.elements.bits.value);
    const encoder = new TextEncoder();
    for (let n = 0; ; n++) {
      const hash = new Uint8Array(await crypto.subtle.digest('SHA-256', encoder.encode(challenge + ':' + n)));
      if (zeroBits(hash) >= bits) {
        form.elements.nonce.value = String(n);
        break;
      }
    }
    status.textContent = 'Sending…';
    form.submit();
  });
})();

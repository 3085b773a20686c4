// Carry an access token (?token=...) on to the page the user picks.
const token = new URLSearchParams(location.search).get("token");
if (token) {
  for (const link of document.querySelectorAll("a.choice")) link.search = `?token=${encodeURIComponent(token)}`;
}

// The QR code encodes the Listen page's LAN address (not "localhost"): show it in words too.
fetch("/qr.svg", { method: "HEAD" }).then((response) => {
  const url = response.headers.get("X-Url");
  if (!url) return;
  const link = document.getElementById("qr-url");
  link.href = url;
  link.textContent = url;
});

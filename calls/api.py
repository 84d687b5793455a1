"""REST API of the calls app (filled in below)."""
from rest_framework.views import APIView
class CallListView(APIView): pass
class CallDetailView(APIView): pass
class CallEventListView(APIView): pass
